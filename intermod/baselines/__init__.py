"""Classical registration methods (ANTs, elastix, ConvexAdam), wrapped to one signature and field convention."""
