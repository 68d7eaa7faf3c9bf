"""Factorizer trainers for nnU-Net's ``-tr``; the classes live in :mod:`nnunet_deconver.nnunet.trainers.factorizer`."""

from nnunet_deconver.nnunet.trainers.factorizer import (  # noqa: F401  (re-exported for nnU-Net's trainer search)
    nnUNetTrainerFactorizerGlobal,
    nnUNetTrainerFactorizerLocal,
    nnUNetTrainerFactorizerSwin,
    nnUNetTrainerFactorizerSwin_demo,
    nnUNetTrainerFactorizerSwin_noCheckpointing,
    nnUNetTrainerFactorizerSwin_selectiveCheckpointing,
    nnUNetTrainerFactorizerSwin_smoke,
)
