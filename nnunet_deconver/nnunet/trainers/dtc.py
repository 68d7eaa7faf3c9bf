"""DTC trainers: nnU-Net's own U-Nets (and Deconver) with every decoder upsampling made deformable.

``nnUNetv2_train D 3d_fullres 0 -tr nnUNetTrainerDTC`` trains nnU-Net's planned network -- the
PlainConvUNet of nnUNetPlans, or the ResidualEncoderUNet of the ResEnc plans -- with each transposed
convolution of its decoder wrapped in a deformable transposed convolution (papers/dtc.md). The
receptive field lambda is 1 input voxel (the paper's default), or 2 / 10 / unlimited in the
``_rf2`` / ``_rf10`` / ``_rfinf`` variants.
"""

from __future__ import annotations

import pydoc
from typing import Any, ClassVar

from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunet_deconver.architectures.dtc_upsampling import DTCPlainConvUNet, DTCResidualEncoderUNet
from nnunet_deconver.nnunet.trainers.deconver import nnUNetTrainerDeconver
from nnunet_deconver.nnunet.trainers.schedule import ScheduleOverride

DTC_OF: dict[type[nn.Module], type[nn.Module]] = {
    PlainConvUNet: DTCPlainConvUNet,
    ResidualEncoderUNet: DTCResidualEncoderUNet,
}


def _class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class nnUNetTrainerDTC(nnUNetTrainer):
    """nnU-Net's recipe and planned network, decoder upsampling by DTC (lambda = 1 input voxel)."""

    dtc_settings: ClassVar[dict[str, Any]] = {"receptive_field": 1.0}
    accepted_networks: ClassVar[tuple[type[nn.Module], ...]] = (PlainConvUNet, ResidualEncoderUNet)
    plans_hint: ClassVar[str] = (
        "train it on plans made by nnUNetv2_plan_and_preprocess (nnUNetPlans, or ResEnc plans), or use a DTC "
        "preset (nnunet-deconver plan) with nnUNetTrainer"
    )

    @classmethod
    def build_network_architecture(
        cls,
        plans_manager: PlansManager,
        configuration_manager: ConfigurationManager,
        num_input_channels: int,
        num_output_channels: int,
        enable_deep_supervision: bool = True,
    ) -> nn.Module:
        class_name = configuration_manager.network_arch_class_name
        planned = pydoc.locate(class_name)
        if planned not in cls.accepted_networks:
            accepted = ", ".join(c.__name__ for c in cls.accepted_networks)
            raise ValueError(f"{cls.__name__} adds DTC to nnU-Net's {accepted}, but the plans name {class_name}; "
                             f"{cls.plans_hint}.")
        arch_kwargs = {**configuration_manager.network_arch_init_kwargs, "dtc": dict(cls.dtc_settings)}
        return get_network_from_plans(
            _class_path(DTC_OF[planned]), arch_kwargs, configuration_manager.network_arch_init_kwargs_req_import,
            num_input_channels, num_output_channels, allow_init=True, deep_supervision=enable_deep_supervision,
        )


class nnUNetTrainerDTC_rf2(nnUNetTrainerDTC):
    """DTC with a receptive field lambda of 2 input voxels."""

    dtc_settings = {"receptive_field": 2.0}


class nnUNetTrainerDTC_rf10(nnUNetTrainerDTC):
    """DTC with a receptive field lambda of 10 input voxels."""

    dtc_settings = {"receptive_field": 10.0}


class nnUNetTrainerDTC_rfinf(nnUNetTrainerDTC):
    """DTC with an unlimited receptive field: offsets may reach the whole feature map."""

    dtc_settings = {"receptive_field": None}


class nnUNetTrainerResEncDTC(nnUNetTrainerDTC):
    """For nnU-Net's residual-encoder plans (nnUNetResEncUNet{M,L,XL}Plans): ResidualEncoderUNet with DTC."""

    accepted_networks = (ResidualEncoderUNet,)
    plans_hint = (
        "plan with nnUNetv2_plan_and_preprocess -pl nnUNetPlannerResEncM (or L, XL) and train with "
        "-p nnUNetResEncUNetMPlans; for nnUNetPlans use nnUNetTrainerDTC"
    )


class nnUNetTrainerDTC_smoke(ScheduleOverride, nnUNetTrainerDTC):
    """2 epochs x 4 iterations: checks that the whole pipeline runs, learns nothing useful."""

    schedule = (2, 4, 2)


class nnUNetTrainerDTC_demo(ScheduleOverride, nnUNetTrainerDTC):
    """The short CPU schedule of the demo dataset (minutes on 2 cores)."""

    schedule = (12, 25, 5)


class nnUNetTrainerDeconverDTC(nnUNetTrainerDeconver):
    """Deconver (nnUNetTrainerDeconver's network) with DTC upsampling in its decoder (lambda = 1 voxel)."""

    @classmethod
    def default_network(cls, topology: dict[str, Any], configuration_manager: ConfigurationManager) -> dict[str, Any]:
        return {**super().default_network(topology, configuration_manager), "dtc": dict(nnUNetTrainerDTC.dtc_settings)}

    @classmethod
    def check_planned_architecture(cls, arch_kwargs: dict[str, Any]) -> None:
        super().check_planned_architecture(arch_kwargs)
        if arch_kwargs.get("dtc") is None:
            raise ValueError(
                f"{cls.__name__} trains Deconver with DTC upsampling but the plans prescribe a Deconver without "
                f"'dtc'; train these plans with nnUNetTrainerDeconver (or nnUNetTrainer), or derive plans with a "
                f"deconver-dtc-* preset."
            )
