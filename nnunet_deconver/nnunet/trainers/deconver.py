"""Deconver trainers: ``nnUNetv2_train D 3d_fullres 0 -tr nnUNetTrainerDeconver`` and variants."""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import torch
from dynamic_network_architectures.building_blocks.helper import convert_conv_op_to_dim
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

from nnunet_deconver.architectures.deconver_unet import DEFAULT_NDC_KERNEL_SIZE, DeconverUNet
from nnunet_deconver.nnunet.lr_schedules import WarmupCosineLRScheduler
from nnunet_deconver.nnunet.trainers.plugin_network import nnUNetTrainerPluginNetwork
from nnunet_deconver.nnunet.trainers.schedule import ScheduleOverride

# What DeconverUNet builds when the plans name no NDC kernel (presets leave defaults out).
_CONSTRUCTOR_NDC_KERNEL_SIZE = inspect.signature(DeconverUNet).parameters["ndc_kernel_size"].default


class nnUNetTrainerDeconver(nnUNetTrainerPluginNetwork):
    """nnU-Net's training recipe with the Deconver network built on the plans' topology.

    The NDC kernel is 3 in 3-D and 5 in 2-D unless a variant sets :attr:`ndc_kernel_size`. With a
    derived plans file (``nnunet-deconver plan``, ``-p nnUNetDeconverPlans``) the network is the
    one the plans prescribe.
    """

    network_class = DeconverUNet
    ndc_kernel_size: ClassVar[int | None] = None

    @classmethod
    def default_network(cls, topology: dict[str, Any], configuration_manager: ConfigurationManager) -> dict[str, Any]:
        spatial_dims = convert_conv_op_to_dim(topology["conv_op"])
        return {"ndc_kernel_size": cls.ndc_kernel_size or DEFAULT_NDC_KERNEL_SIZE[spatial_dims]}

    @classmethod
    def check_planned_architecture(cls, arch_kwargs: dict[str, Any]) -> None:
        planned_kernel = arch_kwargs.get("ndc_kernel_size", _CONSTRUCTOR_NDC_KERNEL_SIZE)
        if cls.ndc_kernel_size is not None and planned_kernel != cls.ndc_kernel_size:
            raise ValueError(
                f"{cls.__name__} uses NDC kernel {cls.ndc_kernel_size} but the plans prescribe {planned_kernel}; "
                f"train plans files with nnUNetTrainerDeconver (or nnUNetTrainer), which follow the plans."
            )


class nnUNetTrainerDeconver_k3(nnUNetTrainerDeconver):
    """Deconver with 3 (x 3 x 3) NDC filters in 2-D and 3-D."""

    ndc_kernel_size = 3


class nnUNetTrainerDeconver_k5(nnUNetTrainerDeconver):
    """Deconver with 5 (x 5 x 5) NDC filters in 2-D and 3-D."""

    ndc_kernel_size = 5


class nnUNetTrainerDeconver_AdamWCosine(nnUNetTrainerDeconver):
    """Deconver with the paper's optimisation recipe (IV.A.3): AdamW, lr 1e-4, weight decay 1e-5,
    cosine schedule with a 1 % warm-up (see :class:`WarmupCosineLRScheduler`)."""

    learning_rate: ClassVar[float] = 1e-4
    adamw_weight_decay: ClassVar[float] = 1e-5

    def configure_optimizers(self) -> tuple[torch.optim.Optimizer, WarmupCosineLRScheduler]:
        optimizer = torch.optim.AdamW(
            self.network.parameters(), lr=self.learning_rate, weight_decay=self.adamw_weight_decay
        )
        return optimizer, WarmupCosineLRScheduler(optimizer, self.learning_rate, self.num_epochs)


class nnUNetTrainerDeconver_smoke(ScheduleOverride, nnUNetTrainerDeconver):
    """2 epochs x 4 iterations: checks that the whole pipeline runs, learns nothing useful."""

    schedule = (2, 4, 2)


class nnUNetTrainerDeconver_demo(ScheduleOverride, nnUNetTrainerDeconver):
    """The short CPU schedule of ``nnunet-deconver demo`` (minutes on 2 cores)."""

    schedule = (12, 25, 5)


class nnUNetTrainerDeconver_noCheckpointing(nnUNetTrainerDeconver):
    """Deconver keeping every activation (no recomputation): fastest, most memory (CPU, or GPUs with room)."""

    activation_checkpointing = "off"


class nnUNetTrainerDeconver_selectiveCheckpointing(nnUNetTrainerDeconver):
    """Deconver recomputing the activations of the two highest-resolution levels only."""

    activation_checkpointing = "selective"
