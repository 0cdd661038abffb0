"""Log Table 1 to Weights & Biases as a table (offline without an account)."""
from __future__ import annotations

import os
from pathlib import Path

from intermod.evaluation.table.render import csv_rows
from intermod.evaluation.table.statistics import Table1
from intermod.wandb_mode import offline_unless_logged_in


def log_to_wandb(table: Table1, out_dir: str | Path, name: str = "table1") -> Path | None:
    """Log the CSV rows as a W&B Table under key ``name``; returns the run folder (None if W&B is disabled)."""
    if os.environ.get("WANDB_MODE") == "disabled":
        return None
    import wandb  # slow to import: only when asked for

    offline_unless_logged_in()

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    header, rows = csv_rows(table)
    run = wandb.init(project="intermod", job_type="table1", dir=str(out_dir), name=name,
                     config={"multirun_dir": ", ".join(map(str, table.roots)), "methods": table.methods})
    try:
        run.log({name: wandb.Table(columns=header, data=[[None if v == "" else v for v in r] for r in rows])})
        return Path(run.dir).parent
    finally:
        run.finish()
