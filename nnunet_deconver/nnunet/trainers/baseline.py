"""nnU-Net's own trainer on the demo's short schedule: the baseline ``nnunet-deconver demo`` compares against."""

from __future__ import annotations

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_deconver.nnunet.trainers.deconver import nnUNetTrainerDeconver_demo
from nnunet_deconver.nnunet.trainers.schedule import ScheduleOverride


class nnUNetTrainer_demo(ScheduleOverride, nnUNetTrainer):
    """nnU-Net's default recipe and PlainConvUNet, unchanged, with the schedule of
    :class:`nnUNetTrainerDeconver_demo` (taken from it, so the comparison stays like for like)."""

    schedule = nnUNetTrainerDeconver_demo.schedule
