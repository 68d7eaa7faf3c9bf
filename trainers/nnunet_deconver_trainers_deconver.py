"""Deconver trainers for nnU-Net's ``-tr``; the classes live in :mod:`nnunet_deconver.nnunet.trainers.deconver`."""

from nnunet_deconver.nnunet.trainers.deconver import (  # noqa: F401  (re-exported for nnU-Net's trainer search)
    nnUNetTrainerDeconver,
    nnUNetTrainerDeconver_AdamWCosine,
    nnUNetTrainerDeconver_demo,
    nnUNetTrainerDeconver_k3,
    nnUNetTrainerDeconver_k5,
    nnUNetTrainerDeconver_noCheckpointing,
    nnUNetTrainerDeconver_selectiveCheckpointing,
    nnUNetTrainerDeconver_smoke,
)
