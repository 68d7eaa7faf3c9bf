"""Short training schedules for smoke tests and demos (nnU-Net's own schedule is 1000 x 250)."""

from __future__ import annotations

from typing import ClassVar

import torch


class ScheduleOverride:
    """Mixin placed before an nnUNetTrainer subclass: overrides the epoch/iteration counts.

    Subclasses set :attr:`schedule` = (epochs, training iterations per epoch, validation
    iterations per epoch). ``__init__`` keeps nnUNetTrainer's exact signature: nnU-Net records the
    constructor's arguments by introspecting it, for checkpoints and for resuming.
    """

    schedule: ClassVar[tuple[int, int, int]]

    def __init__(
        self, plans: dict, configuration: str, fold: int, dataset_json: dict,
        device: torch.device = torch.device("cuda"),
    ) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = self.schedule
