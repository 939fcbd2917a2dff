"""The optimizer and learning-rate schedule of a run, as LightningCLI components.

``MAUGPTModule(optimizer=…, scheduler=…)`` take callables that LightningCLI builds from YAML
(``class_path`` / ``init_args``, the first arguments left out): ``optimizer(param_groups)`` and
``scheduler(optimizer, total_steps)``, ``total_steps`` being the run's optimizer steps
(``trainer.estimated_stepping_batches``). Any ``torch.optim`` optimizer fits the first;
:class:`WarmupCosine` (the default) and e.g. ``torch.optim.lr_scheduler.CosineAnnealingLR``
(``T_max`` = the total steps) fit the second.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

OptimizerCallable = Callable[[Iterable], Optimizer]
SchedulerCallable = Callable[[Optimizer, int], LRScheduler]


class WarmupCosine(LambdaLR):
    """Linear warm-up over ``warmup_ratio`` of ``total_steps``, then cosine decay to 0 (LLaVA's schedule).

    The factor at step ``s`` is ``(s + 1) / (w + 1)`` for ``s < w = ⌊total · warmup_ratio⌋``, then
    ``½ (1 + cos(π · min(1, (s − w) / (total − w))))``.
    """

    def __init__(self, optimizer: Optimizer, total_steps: int, warmup_ratio: float = 0.03) -> None:
        if not 0.0 <= warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {warmup_ratio!r}")
        self.total_steps, self.warmup_steps = max(1, int(total_steps)), int(max(1, int(total_steps)) * warmup_ratio)
        super().__init__(optimizer, self.factor)

    def state_dict(self) -> dict[str, Any]:
        # The run's length comes from the trainer each time: a resumed run that trains for longer
        # gets the schedule of its own length from the restored step on.
        state = super().state_dict()
        state.pop("total_steps"), state.pop("warmup_steps")
        return state

    def factor(self, step: int) -> float:
        warmup, total = self.warmup_steps, self.total_steps
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def default_optimizer(param_groups: Iterable) -> Optimizer:
    """AdamW with β = (0.9, 0.999); each group brings its own learning rate and weight decay."""
    return torch.optim.AdamW(param_groups, betas=(0.9, 0.999))


def component_config(component: Callable | None) -> dict[str, Any] | None:
    """``{"class_path", "init_args"}`` of an optimizer or scheduler callable, for the checkpoint's
    hyper-parameters (plain data, so that ``torch.load(weights_only=True)`` reads it): a class, or
    a ``functools.partial`` of one (what LightningCLI builds from YAML). None for anything else."""
    if component is None:
        return None
    args: dict[str, Any] = {}
    while isinstance(component, functools.partial):
        args = {**component.keywords, **args}
        classes = [a for a in component.args if isinstance(a, type)]
        component = classes[-1] if classes else component.func
    if not isinstance(component, type):
        return None
    plain = all(isinstance(v, (bool, int, float, str, type(None), list, tuple)) for v in args.values())
    return {
        "class_path": f"{component.__module__}.{component.__qualname__}",
        "init_args": {k: list(v) if isinstance(v, tuple) else v for k, v in args.items()} if plain else {},
    }
