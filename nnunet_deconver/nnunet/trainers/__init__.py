"""Every trainer class of the package; nnU-Net finds them through ``ext_trainers``."""

from nnunet_deconver.nnunet.trainers.deconver import (
    nnUNetTrainerDeconver,
    nnUNetTrainerDeconver_AdamWCosine,
    nnUNetTrainerDeconver_demo,
    nnUNetTrainerDeconver_k3,
    nnUNetTrainerDeconver_k5,
    nnUNetTrainerDeconver_smoke,
)
from nnunet_deconver.nnunet.trainers.dtc import (
    nnUNetTrainerDeconverDTC,
    nnUNetTrainerDTC,
    nnUNetTrainerDTC_demo,
    nnUNetTrainerDTC_rf2,
    nnUNetTrainerDTC_rf10,
    nnUNetTrainerDTC_rfinf,
    nnUNetTrainerDTC_smoke,
    nnUNetTrainerResEncDTC,
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
    "nnUNetTrainerDTC",
    "nnUNetTrainerDTC_demo",
    "nnUNetTrainerDTC_rf10",
    "nnUNetTrainerDTC_rf2",
    "nnUNetTrainerDTC_rfinf",
    "nnUNetTrainerDTC_smoke",
    "nnUNetTrainerDeconverDTC",
    "nnUNetTrainerFactorizerGlobal",
    "nnUNetTrainerFactorizerLocal",
    "nnUNetTrainerFactorizerSwin",
    "nnUNetTrainerFactorizerSwin_demo",
    "nnUNetTrainerFactorizerSwin_smoke",
    "nnUNetTrainerResEncDTC",
]
