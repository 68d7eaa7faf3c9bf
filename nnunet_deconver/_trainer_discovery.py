"""Makes ``-tr nnUNetTrainerDeconver`` (and every other trainer of this package) findable by nnU-Net.

nnU-Net looks for trainers outside its own package in the folders listed in the environment
variable ``nnUNet_extTrainer`` (os.pathsep-separated). The installed ``nnunet_deconver.pth`` imports
this module at interpreter start-up, which appends the top-level ``trainers`` folder (see
:mod:`nnunet_deconver.shipped_folders`) to that variable, keeping whatever the user set before it.
Child processes inherit the variable, and the append is idempotent. Only ``os`` is imported here:
this runs in every Python process of the environment.
"""

import os

from nnunet_deconver.shipped_folders import shipped_folder

EXTERNAL_TRAINER_VARIABLE = "nnUNet_extTrainer"
EXTERNAL_TRAINER_FOLDER = shipped_folder("trainers")


def register_external_trainer_folder() -> None:
    """Append :data:`EXTERNAL_TRAINER_FOLDER` to ``nnUNet_extTrainer`` unless it is already listed."""
    current = os.environ.get(EXTERNAL_TRAINER_VARIABLE, "")
    folders = [folder for folder in current.split(os.pathsep) if folder]
    if EXTERNAL_TRAINER_FOLDER not in folders:
        os.environ[EXTERNAL_TRAINER_VARIABLE] = os.pathsep.join(folders + [EXTERNAL_TRAINER_FOLDER])


register_external_trainer_folder()
