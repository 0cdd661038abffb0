"""The networks that predict a displacement field from a CT and an MR patch."""
