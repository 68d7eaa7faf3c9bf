"""DTC trainers for nnU-Net's ``-tr``; the classes live in :mod:`nnunet_deconver.nnunet.trainers.dtc`."""

from nnunet_deconver.nnunet.trainers.dtc import (  # noqa: F401  (re-exported for nnU-Net's trainer search)
    nnUNetTrainerDTC,
    nnUNetTrainerDTC_demo,
    nnUNetTrainerDTC_noCheckpointing,
    nnUNetTrainerDTC_rf10,
    nnUNetTrainerDTC_rf2,
    nnUNetTrainerDTC_rfinf,
    nnUNetTrainerDTC_selectiveCheckpointing,
    nnUNetTrainerDTC_smoke,
    nnUNetTrainerDeconverDTC,
    nnUNetTrainerResEncDTC,
)
