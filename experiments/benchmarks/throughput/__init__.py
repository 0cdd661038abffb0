"""The parts of train_throughput.py: machine and peaks, FLOPs, setups, measurements, profiles, the report."""
