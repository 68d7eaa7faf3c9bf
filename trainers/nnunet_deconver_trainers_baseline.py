"""nnU-Net's own trainer on the demo schedules, for ``-tr``; the classes live in
:mod:`nnunet_deconver.nnunet.trainers.baseline`."""

from nnunet_deconver.nnunet.trainers.baseline import (  # noqa: F401  (re-exported for nnU-Net's trainer search)
    nnUNetTrainer_demo,
    nnUNetTrainer_smoke,
)
