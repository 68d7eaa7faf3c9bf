"""nnU-Net's own trainer on the short demo and smoke schedules: the baseline ``nnunet-deconver demo`` compares with."""

from __future__ import annotations

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_deconver.nnunet.trainers.deconver import nnUNetTrainerDeconver_demo, nnUNetTrainerDeconver_smoke
from nnunet_deconver.nnunet.trainers.schedule import ScheduleOverride


class nnUNetTrainer_demo(ScheduleOverride, nnUNetTrainer):
    """nnU-Net's default recipe and PlainConvUNet, unchanged, with the schedule of
    :class:`nnUNetTrainerDeconver_demo` (taken from it, so the comparison stays like for like)."""

    schedule = nnUNetTrainerDeconver_demo.schedule


class nnUNetTrainer_smoke(ScheduleOverride, nnUNetTrainer):
    """nnU-Net's default trainer with the schedule of :class:`nnUNetTrainerDeconver_smoke`: runs, learns nothing."""

    schedule = nnUNetTrainerDeconver_smoke.schedule
