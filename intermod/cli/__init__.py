"""Console scripts, one small file each. Hydra apps read their configs from the repository's conf/."""
from pathlib import Path

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")
