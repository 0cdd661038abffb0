"""intermod: CT-to-MR deformable registration networks trained with intra-modality similarity on paired data."""
__version__ = "0.1.0"
