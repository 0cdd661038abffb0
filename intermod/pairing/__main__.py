"""The child process of intermod-pair's registrations: ``python -m intermod.pairing WORKDIR`` (see stages)."""
import sys
from pathlib import Path

from intermod.pairing.stages import pair_files

pair_files(Path(sys.argv[1]))
