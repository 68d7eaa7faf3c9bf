"""SUM trainers (papers/segmentation-cnns-are-denoising-models.md): ``nnUNetv2_train D 2d 0 -tr nnUNetTrainerSUM``.

* ``nnUNetTrainerSUM``: SUM_Seg, the SUM on nnU-Net's planned topology and widths with nnU-Net's loss,
  optimiser, schedule and augmentation;
* ``nnUNetTrainerSUMRec``: SUM_Rec, the same plus lambda mean|x - ED_{alpha=0}(x)| (lambda = 0.35), a
  second pass of the encoder-decoder on the same batch at alpha = 0;
* ``..._paper``: the paper's network and recipe (:mod:`~nnunet_deconver.nnunet.sum_recipe`): widths
  8 * 2^l on the planned stages and strides, the authors' shrinkage leaks, no deep supervision, the
  output m^ = clamp(w c^, 0, 1) for binary tasks (a pointwise output otherwise), soft IoU, AdamW
  (lr 3.5e-4, weight decay 0.25 on every parameter), the per-epoch linear decay, clipping at 1e-3,
  flips and rot90 only; nnU-Net's patch sampling, batch size and epochs are kept;
* ``_demo`` / ``_smoke``: the short schedules of the other families.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunet_deconver.architectures.sum_network import SUMNet
from nnunet_deconver.layers.shrinkage import AUTHORS_LEAKS
from nnunet_deconver.nnunet.sum_recipe import (
    PaperLinearDecay,
    ReconstructionRegularisedLoss,
    SoftIoULoss,
    clip_before_every_step,
    paper_training_transforms,
    sum_network_in,
)
from nnunet_deconver.nnunet.trainers.plugin_network import nnUNetTrainerPluginNetwork
from nnunet_deconver.nnunet.trainers.schedule import ScheduleOverride

PAPER_BASE_WIDTH = 8


class nnUNetTrainerSUM(nnUNetTrainerPluginNetwork):
    """SUM_Seg with nnU-Net's recipe; deep supervision through the SUM's auxiliary heads (if it has them)."""

    network_class = SUMNet

    def __init__(
        self, plans: dict, configuration: str, fold: int, dataset_json: dict,
        device: torch.device = torch.device("cuda"),
    ) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        if not self.network_kwargs().get("deep_supervision_heads", True):
            self.enable_deep_supervision = False  # the paper's network has no heads to supervise

    def network_kwargs(self) -> dict[str, Any]:
        """The SUMNet hyper-parameters this trainer builds for its plans configuration."""
        return self.network_architecture(self.configuration_manager)["arch_kwargs"]


class nnUNetTrainerSUMRec(nnUNetTrainerSUM):
    """SUM_Rec: nnU-Net's loss + :attr:`reconstruction_weight` mean|x - ED_{alpha=0}(x)| on every batch."""

    reconstruction_weight: ClassVar[float] = 0.35

    @classmethod
    def check_planned_architecture(cls, arch_kwargs: dict[str, Any]) -> None:
        ed_channels = arch_kwargs.get("ed_channels", "input")
        if ed_channels != "input":
            raise ValueError(
                f"{cls.__name__} compares the encoder-decoder's output with the input, but these plans build "
                f"it with ed_channels={ed_channels!r} (one map per class); use ed_channels 'input' or train "
                f"nnUNetTrainerSUM."
            )

    def initialize(self) -> None:
        super().initialize()
        self.loss = ReconstructionRegularisedLoss(self.loss, sum_network_in(self.network),
                                                  weight=self.reconstruction_weight)
        self.network.register_forward_pre_hook(self.loss.remember_input)


class _PaperRecipe:
    """Mixin placed before a SUM trainer: the paper's network choices and recipe (module docstring)."""

    initial_lr = 3.5e-4
    adamw_weight_decay: ClassVar[float] = 0.25
    gradient_clip: ClassVar[float] = 1e-3

    def __init__(
        self, plans: dict, configuration: str, fold: int, dataset_json: dict,
        device: torch.device = torch.device("cuda"),
    ) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.label_manager.has_regions or self.is_cascaded:
            raise ValueError(f"{type(self).__name__} trains label maps with the soft IoU; region-based or cascaded "
                             f"training is not part of the paper's recipe: use nnUNetTrainerSUM.")
        self.initial_lr = type(self).initial_lr
        self.enable_deep_supervision = False

    @classmethod
    def default_network(cls, topology: dict[str, Any], configuration_manager: ConfigurationManager) -> dict[str, Any]:
        return {
            "features_per_stage": [PAPER_BASE_WIDTH * 2**level for level in range(topology["n_stages"])],
            "output_layer": "paper",
            "output_bias": False,
            "deep_supervision_heads": False,
            "shrinkage_leaks": list(AUTHORS_LEAKS),
        }

    @classmethod
    def build_network_architecture(
        cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager, num_input_channels: int,
        num_output_channels: int, enable_deep_supervision: bool = True,
    ) -> nn.Module:
        if num_output_channels != 2:  # the paper's single foreground map exists for binary tasks only
            configuration_manager = _with_pointwise_output(cls, configuration_manager)
        return super().build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                  num_output_channels, enable_deep_supervision)

    def _build_loss(self) -> nn.Module:
        return SoftIoULoss(sum_network_in(self.network), ignore_label=self.label_manager.ignore_label)

    def configure_optimizers(self) -> tuple[torch.optim.Optimizer, PaperLinearDecay]:
        optimizer = torch.optim.AdamW(self.network.parameters(), lr=self.initial_lr,
                                      weight_decay=self.adamw_weight_decay)
        clip_before_every_step(optimizer, self.network.parameters, self.gradient_clip)
        return optimizer, PaperLinearDecay(optimizer, self.initial_lr, self.num_epochs)

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self) -> tuple[Any, bool, Any, tuple[int, ...]]:
        patch_size = tuple(self.configuration_manager.patch_size)
        mirror_axes = (len(patch_size) - 1,)  # horizontal flips only, at training and test time
        self.inference_allowed_mirroring_axes = mirror_axes
        return None, False, patch_size, mirror_axes

    def get_training_transforms(self, patch_size: Any, *args: Any, **kwargs: Any) -> Any:
        nnunet_transforms = super().get_training_transforms(patch_size, (0.0, 0.0), *args[1:], **kwargs)
        return paper_training_transforms(tuple(patch_size), nnunet_transforms)


def _with_pointwise_output(trainer: type, configuration_manager: ConfigurationManager) -> ConfigurationManager:
    """A copy of the configuration whose SUMNet gets a pointwise output layer (multi-class tasks)."""
    architecture = trainer.network_architecture(configuration_manager)
    configuration = dict(configuration_manager.configuration)
    configuration["architecture"] = {**architecture, "arch_kwargs": {**architecture["arch_kwargs"],
                                                                     "output_layer": "pointwise"}}
    return ConfigurationManager(configuration)


class nnUNetTrainerSUM_paper(_PaperRecipe, nnUNetTrainerSUM):
    """SUM_Seg with the paper's network and recipe."""


class nnUNetTrainerSUMRec_paper(_PaperRecipe, nnUNetTrainerSUMRec):
    """SUM_Rec with the paper's network and recipe (soft IoU + 0.35 mean|x - ED_{alpha=0}(x)|)."""


class nnUNetTrainerSUM_smoke(ScheduleOverride, nnUNetTrainerSUM):
    """2 epochs x 4 iterations: checks that the whole pipeline runs, learns nothing useful."""

    schedule = (2, 4, 2)


class nnUNetTrainerSUM_demo(ScheduleOverride, nnUNetTrainerSUM):
    """The short CPU schedule of the demo dataset (minutes on 2 cores)."""

    schedule = (12, 25, 5)


class nnUNetTrainerSUMRec_smoke(ScheduleOverride, nnUNetTrainerSUMRec):
    """SUM_Rec, 2 epochs x 4 iterations."""

    schedule = (2, 4, 2)


class nnUNetTrainerSUMRec_demo(ScheduleOverride, nnUNetTrainerSUMRec):
    """SUM_Rec on the short CPU schedule of the demo dataset."""

    schedule = (12, 25, 5)


class nnUNetTrainerSUM_paper_smoke(ScheduleOverride, nnUNetTrainerSUM_paper):
    """The paper recipe, 2 epochs x 4 iterations."""

    schedule = (2, 4, 2)
