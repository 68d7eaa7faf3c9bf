"""Short training schedules for smoke tests and demos (nnU-Net's own variants are 1000 x 250)."""

from __future__ import annotations

from typing import ClassVar


class ScheduleOverride:
    """Mixin placed before an nnUNetTrainer subclass: overrides the epoch/iteration counts.

    Subclasses set :attr:`schedule` = (epochs, training iterations per epoch, validation
    iterations per epoch).
    """

    schedule: ClassVar[tuple[int, int, int]]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = self.schedule
