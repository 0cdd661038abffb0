import math

import pytest
import torch

from intermod.schedules import warmup_cosine


def factors(total, warmup, final, steps):
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    schedule = warmup_cosine(optimizer, total, warmup, final)
    seen = []
    for _ in range(steps):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return seen


def test_linear_warm_up_then_half_cosine_to_the_final_factor():
    lr = factors(total=110, warmup=10, final=0.1, steps=130)
    assert lr[0] == pytest.approx(0.1) and lr[4] == pytest.approx(0.5) and lr[9] == pytest.approx(1.0)
    assert lr[10] == pytest.approx(1.0)  # the cosine starts at the full rate
    assert lr[60] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))  # halfway: 0.55
    assert lr[110] == pytest.approx(0.1) and lr[129] == pytest.approx(0.1)  # stays at the floor
    assert all(a >= b for a, b in zip(lr[10:], lr[11:]))  # never rises after warm-up


def test_no_warm_up_starts_at_the_full_rate():
    assert factors(total=4, warmup=0, final=0.0, steps=5) == pytest.approx([1.0, 0.8535534, 0.5, 0.1464466, 0.0])


@pytest.mark.parametrize("total, warmup, final", [(0, 0, 0.0), (10, 10, 0.0), (10, -1, 0.0), (10, 2, 1.5)])
def test_invalid_schedules_raise(total, warmup, final):
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    with pytest.raises(ValueError):
        warmup_cosine(optimizer, total, warmup, final)
