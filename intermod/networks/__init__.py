"""The networks that predict a displacement (or a velocity, the diffeomorphic option) from a CT and an MR patch."""
