"""Learning-rate schedules beyond torch's own: linear warm-up, then cosine decay, counted in steps."""
from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["warmup_cosine"]


def warmup_cosine(optimizer: Optimizer, total_steps: int, warmup_steps: int = 0, final_factor: float = 0.0) -> LambdaLR:
    """The learning rate rises linearly from 1/warmup_steps of its value to its value over ``warmup_steps``,
    then falls along a half cosine to ``final_factor`` times its value at ``total_steps`` (and stays there).

    Step it every optimiser step (the module's ``scheduler_interval: step``).
    """
    if total_steps < 1 or not 0 <= warmup_steps < total_steps:
        raise ValueError(f"need total_steps >= 1 and 0 <= warmup_steps < total_steps, got {total_steps}, {warmup_steps}"
                         " (set trainer.max_steps for a step-counted schedule)")
    if not 0 <= final_factor <= 1:
        raise ValueError(f"final_factor must be in [0, 1], got {final_factor}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
        return final_factor + (1 - final_factor) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
