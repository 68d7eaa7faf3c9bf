"""Deconver trainers: ``nnUNetv2_train D 3d_fullres 0 -tr nnUNetTrainerDeconver`` and variants."""

from __future__ import annotations

from typing import ClassVar

from dynamic_network_architectures.building_blocks.helper import convert_conv_op_to_dim
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunet_deconver.architectures.deconver_unet import DeconverUNet
from nnunet_deconver.nnunet.plans_topology import plans_topology
from nnunet_deconver.nnunet.trainers.schedule import ScheduleOverride

# The paper found 3x3x3 best in 3-D (ISLES'22, BraTS'23) and 5x5 best in 2-D (GlaS, FIVES).
DEFAULT_NDC_KERNEL_SIZE: dict[int, int] = {2: 5, 3: 3}


class nnUNetTrainerDeconver(nnUNetTrainer):
    """nnU-Net's training recipe with the Deconver network built on the plans' topology.

    The NDC kernel is 3 in 3-D and 5 in 2-D unless a variant sets :attr:`ndc_kernel_size`.
    """

    ndc_kernel_size: ClassVar[int | None] = None

    @classmethod
    def build_network_architecture(
        cls,
        plans_manager: PlansManager,
        configuration_manager: ConfigurationManager,
        num_input_channels: int,
        num_output_channels: int,
        enable_deep_supervision: bool = True,
    ) -> nn.Module:
        topology = plans_topology(configuration_manager)
        spatial_dims = convert_conv_op_to_dim(topology["conv_op"])
        kernel_size = cls.ndc_kernel_size or DEFAULT_NDC_KERNEL_SIZE[spatial_dims]
        return DeconverUNet(
            input_channels=num_input_channels,
            num_classes=num_output_channels,
            deep_supervision=enable_deep_supervision,
            ndc_kernel_size=kernel_size,
            **topology,
        )


class nnUNetTrainerDeconver_k3(nnUNetTrainerDeconver):
    """Deconver with 3 (x 3 x 3) NDC filters in 2-D and 3-D."""

    ndc_kernel_size = 3


class nnUNetTrainerDeconver_k5(nnUNetTrainerDeconver):
    """Deconver with 5 (x 5 x 5) NDC filters in 2-D and 3-D."""

    ndc_kernel_size = 5


class nnUNetTrainerDeconver_smoke(ScheduleOverride, nnUNetTrainerDeconver):
    """2 epochs x 4 iterations: checks that the whole pipeline runs, learns nothing useful."""

    schedule = (2, 4, 2)


class nnUNetTrainerDeconver_demo(ScheduleOverride, nnUNetTrainerDeconver):
    """The short CPU schedule of ``nnunet-deconver demo`` (minutes on 2 cores)."""

    schedule = (12, 25, 5)
