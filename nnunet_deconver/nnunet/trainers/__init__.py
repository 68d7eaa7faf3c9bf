"""Every trainer class of the package; nnU-Net finds them through ``ext_trainers``."""

from nnunet_deconver.nnunet.trainers.deconver import (
    nnUNetTrainerDeconver,
    nnUNetTrainerDeconver_AdamWCosine,
    nnUNetTrainerDeconver_demo,
    nnUNetTrainerDeconver_k3,
    nnUNetTrainerDeconver_k5,
    nnUNetTrainerDeconver_smoke,
)
from nnunet_deconver.nnunet.trainers.factorizer import (
    nnUNetTrainerFactorizerGlobal,
    nnUNetTrainerFactorizerLocal,
    nnUNetTrainerFactorizerSwin,
    nnUNetTrainerFactorizerSwin_demo,
    nnUNetTrainerFactorizerSwin_smoke,
)

__all__ = [
    "nnUNetTrainerDeconver",
    "nnUNetTrainerDeconver_AdamWCosine",
    "nnUNetTrainerDeconver_demo",
    "nnUNetTrainerDeconver_k3",
    "nnUNetTrainerDeconver_k5",
    "nnUNetTrainerDeconver_smoke",
    "nnUNetTrainerFactorizerGlobal",
    "nnUNetTrainerFactorizerLocal",
    "nnUNetTrainerFactorizerSwin",
    "nnUNetTrainerFactorizerSwin_demo",
    "nnUNetTrainerFactorizerSwin_smoke",
]
