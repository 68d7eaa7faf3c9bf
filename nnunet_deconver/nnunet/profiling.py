"""The networks ``nnunet-deconver profile`` compares: ours and nnU-Net's own on the same topology and input."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from dynamic_network_architectures.building_blocks.helper import (
    convert_conv_op_to_dim,
    convert_dim_to_conv_op,
    get_matching_instancenorm,
)
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from torch import nn

from nnunet_deconver.architectures.registry import class_path
from nnunet_deconver.nnunet.network_from_plans import build_network
from nnunet_deconver.nnunet.plans_topology import plans_topology
from nnunet_deconver.nnunet.presets import Preset
from nnunet_deconver.nnunet.trainers import trainer_classes
from nnunet_deconver.nnunet.reference_plans import REFERENCE_CONFIGURATIONS, reference_plans_manager

PLAIN_UNET_NAME = "nnU-Net PlainConvUNet, same topology"


def nnunet_plain_unet(topology: dict[str, Any], input_channels: int, num_classes: int) -> nn.Module:
    """nnU-Net's default PlainConvUNet (2 convolutions per stage, affine instance norm, leaky ReLU) on ``topology``."""
    conv_op = topology["conv_op"]
    n_stages = topology["n_stages"]
    return PlainConvUNet(
        input_channels, n_stages, topology["features_per_stage"], conv_op, topology["kernel_sizes"],
        topology["strides"], [2] * n_stages, num_classes, [2] * (n_stages - 1), conv_bias=True,
        norm_op=get_matching_instancenorm(conv_op), norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=True,
    )


NetworkBuilder = Callable[[], nn.Module]
"""Builds a network on the current default device (``torch.device('meta')``, or fake tensors for profiling)."""


@dataclass(frozen=True)
class ProfileTarget:
    """What ``nnunet-deconver profile`` compares: our network and nnU-Net's on the same topology and input."""

    name: str
    baseline_name: str
    build: NetworkBuilder
    build_baseline: NetworkBuilder
    input_shape: tuple[int, ...]  # (batch, channels, *patch)


def preset_target(
    preset: Preset, patch_size: tuple[int, ...], input_channels: int, num_classes: int, batch_size: int
) -> ProfileTarget:
    """A paper-topology preset at ``patch_size`` next to nnU-Net's PlainConvUNet on that topology.

    The topology is the paper's: ``stages`` of the preset, stride 2 and kernel 3 on every axis.

    Raises:
        ValueError: the preset keeps nnU-Net's topology (profile a dataset's plans instead) or the
            patch does not match the preset's dimension.
    """
    if preset.stages is None:
        raise ValueError(
            f"Preset {preset.name!r} takes nnU-Net's planned topology; profile it on a dataset with "
            f"`nnunet-deconver profile -m <model folder>` or use a paper preset such as deconver-isles22-k3."
        )
    if len(patch_size) != preset.dimension:
        raise ValueError(f"Preset {preset.name!r} is {preset.dimension}D but the patch size {patch_size} is not.")
    n_stages = preset.stages["n_stages"]
    conv_op = convert_dim_to_conv_op(preset.dimension)
    planned = {
        "n_stages": n_stages,
        "features_per_stage": [0] * n_stages,  # replaced by the preset's C_l = min(C0 * 2^l, max)
        "conv_op": class_path(conv_op),
        "kernel_sizes": [[3] * preset.dimension] * n_stages,
        "strides": [[1] * preset.dimension] + [[2] * preset.dimension] * (n_stages - 1),
    }
    configuration = {"patch_size": list(patch_size)}
    architecture = preset.architecture(
        {"network_class_name": class_path(PlainConvUNet), "arch_kwargs": planned, "_kw_requires_import": ["conv_op"]},
        "profile", configuration,
    )
    topology = {**{key: architecture["arch_kwargs"][key] for key in planned}, "conv_op": conv_op}
    return ProfileTarget(
        preset.name, PLAIN_UNET_NAME,
        lambda: build_network(architecture, input_channels, num_classes, True, configuration),
        lambda: nnunet_plain_unet(topology, input_channels, num_classes),
        (batch_size, input_channels, *patch_size),
    )


def model_folder_target(model_folder: Path) -> ProfileTarget:
    """A trained model's network at its plans' batch and patch, next to nnU-Net's PlainConvUNet on its topology.

    ``model_folder`` is nnU-Net's ``nnUNet_results/DatasetXXX/<trainer>__<plans>__<configuration>``.
    """
    try:
        trainer_name, _plans_name, configuration = model_folder.name.split("__")
    except ValueError as error:
        raise ValueError(
            f"{model_folder} is not an nnU-Net model folder (<trainer>__<plans>__<configuration>)."
        ) from error
    for required in ("plans.json", "dataset.json"):
        if not (model_folder / required).is_file():
            raise FileNotFoundError(f"{model_folder / required} is missing; is {model_folder} a trained model folder?")
    plans_manager = PlansManager(str(model_folder / "plans.json"))
    dataset_json = json.loads((model_folder / "dataset.json").read_text())
    configuration_manager = plans_manager.get_configuration(configuration)
    input_channels = determine_num_input_channels(plans_manager, configuration_manager, dataset_json)
    num_classes = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
    trainer = recursive_find_trainer_class_by_name(trainer_name)
    topology = plans_topology(configuration_manager)
    if convert_conv_op_to_dim(topology["conv_op"]) != len(configuration_manager.patch_size):
        raise ValueError(f"The plans' conv_op does not match the {len(configuration_manager.patch_size)}D patch.")
    return ProfileTarget(
        model_folder.name, PLAIN_UNET_NAME,
        lambda: trainer.build_network_architecture(
            plans_manager, configuration_manager, input_channels, num_classes, True),
        lambda: nnunet_plain_unet(topology, input_channels, num_classes),
        (configuration_manager.batch_size, input_channels, *configuration_manager.patch_size),
    )


def reference_plans_target(trainer_name: str, configuration: str, *, resenc: bool = False) -> ProfileTarget:
    """A trainer's network at nnU-Net's reference plans (:mod:`reference_plans`), next to the planned network
    itself (PlainConvUNet, or ResidualEncoderUNet with ``resenc``), as nnUNetTrainer builds it."""
    if configuration not in REFERENCE_CONFIGURATIONS:
        raise ValueError(f"--reference-plans must be one of {sorted(REFERENCE_CONFIGURATIONS)}, got {configuration!r}.")
    trainer = trainer_classes().get(trainer_name) or recursive_find_trainer_class_by_name(trainer_name)
    if trainer is None:
        raise ValueError(f"Trainer {trainer_name!r} was not found (nnU-Net's or this package's -tr names).")
    plans_manager = reference_plans_manager(resenc=resenc)
    configuration_manager = plans_manager.get_configuration(configuration)
    baseline = nnUNetTrainer.build_network_architecture
    return ProfileTarget(
        f"{trainer_name}, {plans_manager.plans_name} {configuration}",
        f"{'ResidualEncoderUNet' if resenc else 'PlainConvUNet'} (nnUNetTrainer)",
        lambda: trainer.build_network_architecture(plans_manager, configuration_manager, 1, 2, True),
        lambda: baseline(plans_manager, configuration_manager, 1, 2, True),
        (configuration_manager.batch_size, 1, *configuration_manager.patch_size),
    )


def meta_networks(target: ProfileTarget) -> tuple[nn.Module, nn.Module]:
    """(our network, nnU-Net's) of ``target`` built on the meta device (no memory: counts and shapes only)."""
    with torch.device("meta"):
        return target.build(), target.build_baseline()
