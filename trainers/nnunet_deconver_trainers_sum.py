"""SUM trainers for nnU-Net's ``-tr``; the classes live in :mod:`nnunet_deconver.nnunet.trainers.sum`."""

from nnunet_deconver.nnunet.trainers.sum import (  # noqa: F401  (re-exported for nnU-Net's trainer search)
    nnUNetTrainerSUM,
    nnUNetTrainerSUM_demo,
    nnUNetTrainerSUM_paper,
    nnUNetTrainerSUM_paper_smoke,
    nnUNetTrainerSUM_smoke,
    nnUNetTrainerSUMRec,
    nnUNetTrainerSUMRec_demo,
    nnUNetTrainerSUMRec_paper,
    nnUNetTrainerSUMRec_smoke,
)
