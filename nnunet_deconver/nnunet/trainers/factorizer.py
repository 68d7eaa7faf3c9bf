"""Factorizer trainers: ``nnUNetv2_train D 3d_fullres 0 -tr nnUNetTrainerFactorizerSwin`` and variants.

On nnU-Net's plans every trainer builds :class:`FactorizerUNet` on the planned topology with its
defaults, the paper's BraTS block settings (section 4.2): head dimension E = 8, window P = 8, rank
R = 1, T = 5 HALS iterations, MLP ratio 2, one block per stage, and the positional embedding sized
from the plans' patch size. The variants differ in Matricize only. Along a patch axis shorter than
P (thin 3-D patches) the window is that axis, which is what Matricize computes anyway; FactorizerUNet
refuses windows larger than the patch when they are asked for explicitly.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

from nnunet_deconver.architectures.factorizer_unet import FactorizerUNet
from nnunet_deconver.layers.matricize import MatricizeKind
from nnunet_deconver.nnunet.trainers.plugin_network import nnUNetTrainerPluginNetwork
from nnunet_deconver.nnunet.trainers.schedule import ScheduleOverride

# What FactorizerUNet builds when the plans name no matricize or window (presets leave defaults out).
_CONSTRUCTOR_DEFAULTS = inspect.signature(FactorizerUNet).parameters
_CONSTRUCTOR_MATRICIZE: MatricizeKind = _CONSTRUCTOR_DEFAULTS["matricize"].default
_CONSTRUCTOR_WINDOW: int = _CONSTRUCTOR_DEFAULTS["window"].default


class nnUNetTrainerFactorizerSwin(nnUNetTrainerPluginNetwork):
    """Swin Factorizer (shifted-window Matricize), the paper's best model, with nnU-Net's recipe."""

    network_class = FactorizerUNet
    matricize: ClassVar[MatricizeKind] = "swin"

    @classmethod
    def default_network(cls, topology: dict[str, Any], configuration_manager: ConfigurationManager) -> dict[str, Any]:
        settings: dict[str, Any] = {"matricize": cls.matricize}  # the others: FactorizerUNet's defaults
        patch = list(configuration_manager.patch_size)
        if any(n < _CONSTRUCTOR_WINDOW for n in patch):
            settings["window"] = [min(_CONSTRUCTOR_WINDOW, n) for n in patch]
        return settings

    @classmethod
    def check_planned_architecture(cls, arch_kwargs: dict[str, Any]) -> None:
        planned = arch_kwargs.get("matricize", _CONSTRUCTOR_MATRICIZE)
        if planned != cls.matricize:
            raise ValueError(
                f"{cls.__name__} trains '{cls.matricize}' Matricize but the plans prescribe '{planned}'; train "
                f"these plans with nnUNetTrainer (it follows the plans)."
            )


class nnUNetTrainerFactorizerLocal(nnUNetTrainerFactorizerSwin):
    """Local Factorizer (non-overlapping windows) with nnU-Net's recipe."""

    matricize = "local"


class nnUNetTrainerFactorizerGlobal(nnUNetTrainerFactorizerSwin):
    """Global Factorizer (whole image per matrix) with nnU-Net's recipe."""

    matricize = "global"


class nnUNetTrainerFactorizerSwin_smoke(ScheduleOverride, nnUNetTrainerFactorizerSwin):
    """2 epochs x 4 iterations: checks that the whole pipeline runs, learns nothing useful."""

    schedule = (2, 4, 2)


class nnUNetTrainerFactorizerSwin_demo(ScheduleOverride, nnUNetTrainerFactorizerSwin):
    """The short CPU schedule of the demo dataset (minutes on 2 cores)."""

    schedule = (12, 25, 5)


class nnUNetTrainerFactorizerSwin_noCheckpointing(nnUNetTrainerFactorizerSwin):
    """Swin Factorizer keeping every activation (no recomputation): fastest, most memory (CPU, or GPUs with room)."""

    activation_checkpointing = "off"


class nnUNetTrainerFactorizerSwin_selectiveCheckpointing(nnUNetTrainerFactorizerSwin):
    """Swin Factorizer recomputing the activations of the two highest-resolution levels only."""

    activation_checkpointing = "selective"
