"""Writes that never leave half a file: a temporary file in the same folder, then a rename."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def atomic_write_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | Path, payload: dict) -> Path:
    return atomic_write_text(path, json.dumps(payload, indent=2) + "\n")


def atomic_write_report(out: str | Path, payload: dict, markdown: str) -> Path:
    """A measurement's record and its table side by side: ``out`` with suffix .json and .md (returned)."""
    out = Path(out)
    atomic_write_json(out.with_suffix(".json"), payload)
    return atomic_write_text(out.with_suffix(".md"), markdown)
