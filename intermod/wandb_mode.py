"""W&B without an account: with no API key, runs go offline (upload later with `wandb sync`)."""
from __future__ import annotations

import os
from pathlib import Path


def offline_unless_logged_in() -> bool:
    """True, with ``WANDB_MODE=offline`` set, when W&B would otherwise fail or prompt for a login.

    An explicit ``WANDB_MODE`` or ``WANDB_API_KEY``, or a W&B entry in ~/.netrc, is respected.
    """
    if os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY"):
        return os.environ.get("WANDB_MODE") in ("offline", "dryrun")
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    if netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
        return False
    os.environ["WANDB_MODE"] = "offline"
    return True
