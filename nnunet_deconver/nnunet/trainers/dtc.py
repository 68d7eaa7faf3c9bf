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
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager
from torch import nn

from nnunet_deconver.architectures.registry import class_path, registered_architectures
from nnunet_deconver.nnunet.network_from_plans import Architecture
from nnunet_deconver.nnunet.trainers.deconver import nnUNetTrainerDeconver
from nnunet_deconver.nnunet.trainers.plugin_network import nnUNetTrainerPluginNetwork
from nnunet_deconver.nnunet.trainers.schedule import ScheduleOverride


def dtc_wrapper_of(network_class: type[nn.Module]) -> type[nn.Module] | None:
    """The registered DTC wrapper of one of nnU-Net's networks (the entry that ``wraps`` it), if any."""
    wrappers = [entry.cls for entry in registered_architectures().values() if entry.wraps is network_class]
    return wrappers[0] if wrappers else None


class nnUNetTrainerDTC(nnUNetTrainerPluginNetwork):
    """nnU-Net's recipe and planned network, decoder upsampling by DTC (lambda = 1 input voxel)."""

    network_class = None  # nnU-Net's planned network, wrapped
    dtc_settings: ClassVar[dict[str, Any]] = {"receptive_field": 1.0}
    accepted_networks: ClassVar[tuple[type[nn.Module], ...]] = (PlainConvUNet, ResidualEncoderUNet)
    plans_hint: ClassVar[str] = (
        "train it on plans made by nnUNetv2_plan_and_preprocess (nnUNetPlans, or ResEnc plans), or use a DTC "
        "preset (nnunet-deconver plan) with nnUNetTrainer"
    )

    @classmethod
    def plans_mismatch_hint(cls) -> str:
        return cls.plans_hint

    @classmethod
    def default_architecture(cls, planned: Architecture, configuration_manager: ConfigurationManager) -> Architecture:
        class_name = planned["network_class_name"]
        network_class = pydoc.locate(class_name)
        wrapper = dtc_wrapper_of(network_class) if network_class in cls.accepted_networks else None
        if wrapper is None:
            accepted = ", ".join(c.__name__ for c in cls.accepted_networks)
            raise ValueError(f"{cls.__name__} adds DTC to nnU-Net's {accepted}, but the plans name {class_name}; "
                             f"{cls.plans_hint}.")
        return {
            "network_class_name": class_path(wrapper),
            "arch_kwargs": {**planned["arch_kwargs"], "dtc": dict(cls.dtc_settings)},
            "_kw_requires_import": planned["_kw_requires_import"],
        }


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


class nnUNetTrainerDTC_noCheckpointing(nnUNetTrainerDTC):
    """nnU-Net's network with DTC keeping every activation (no recomputation): fastest, most memory (CPU, or GPUs with room)."""

    activation_checkpointing = "off"


class nnUNetTrainerDTC_selectiveCheckpointing(nnUNetTrainerDTC):
    """nnU-Net's network with DTC recomputing the activations of the two highest-resolution levels only."""

    activation_checkpointing = "selective"
