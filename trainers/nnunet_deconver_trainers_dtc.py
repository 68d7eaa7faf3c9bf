"""DTC trainers for nnU-Net's ``-tr``; the classes live in :mod:`nnunet_deconver.nnunet.trainers.dtc`."""

from nnunet_deconver.nnunet.trainers.dtc import (  # noqa: F401  (re-exported for nnU-Net's trainer search)
    nnUNetTrainerDeconverDTC,
    nnUNetTrainerDTC,
    nnUNetTrainerDTC_demo,
    nnUNetTrainerDTC_rf2,
    nnUNetTrainerDTC_rf10,
    nnUNetTrainerDTC_rfinf,
    nnUNetTrainerDTC_smoke,
    nnUNetTrainerResEncDTC,
)
