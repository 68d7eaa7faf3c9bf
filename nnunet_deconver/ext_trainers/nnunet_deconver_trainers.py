"""The module nnU-Net imports from ``nnUNet_extTrainer`` to find this package's trainers.

nnU-Net imports the modules of an external trainer folder as top-level modules and forgets them
afterwards, so the trainer classes live in :mod:`nnunet_deconver.nnunet.trainers` (importable by
their package path, which multiprocessing and checkpoints rely on) and are only re-exported here.
"""

from nnunet_deconver.nnunet.trainers import *  # noqa: F401,F403
