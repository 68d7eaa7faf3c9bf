"""Learning-rate schedules stepped once per epoch, as nnU-Net steps its PolyLRScheduler."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import _LRScheduler


class WarmupCosineLRScheduler(_LRScheduler):
    """Linear warm-up from ``initial_lr * warmup_start_factor`` to ``initial_lr``, then cosine decay to 0.

    The Deconver paper (IV.A.3) trains with a cosine schedule and a warm-up over the first 1 % of
    training during which the rate is reduced tenfold; we read that as a linear ramp from
    initial_lr / 10 to initial_lr over ``warmup_fraction`` of the epochs (at least one).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        initial_lr: float,
        max_steps: int,
        warmup_fraction: float = 0.01,
        warmup_start_factor: float = 0.1,
    ) -> None:
        self.initial_lr = initial_lr
        self.max_steps = max_steps
        self.warmup_steps = max(1, round(warmup_fraction * max_steps))
        self.warmup_start_factor = warmup_start_factor
        self.ctr = 0
        super().__init__(optimizer, -1)

    def lr_at(self, step: int) -> float:
        """The learning rate of epoch ``step``."""
        if step < self.warmup_steps:
            ramp = step / self.warmup_steps
            return self.initial_lr * (self.warmup_start_factor + (1 - self.warmup_start_factor) * ramp)
        progress = (step - self.warmup_steps) / max(1, self.max_steps - self.warmup_steps)
        return self.initial_lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    def step(self, current_step: int | None = None) -> None:
        if current_step is None or current_step == -1:
            current_step = self.ctr
            self.ctr += 1
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(current_step)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]
