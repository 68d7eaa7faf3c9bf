"""Build the networks ``nnunet-deconver profile`` compares: ours and nnU-Net's PlainConvUNet, same topology."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from dynamic_network_architectures.building_blocks.helper import (
    convert_conv_op_to_dim,
    convert_dim_to_conv_op,
    get_matching_instancenorm,
)
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from torch import nn

from nnunet_deconver.architectures.registry import class_path
from nnunet_deconver.nnunet.network_from_plans import build_network
from nnunet_deconver.nnunet.plans_topology import plans_topology
from nnunet_deconver.nnunet.presets import Preset


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


def preset_networks(
    preset: Preset, patch_size: tuple[int, ...], input_channels: int, num_classes: int
) -> tuple[nn.Module, nn.Module]:
    """(preset network, nnU-Net PlainConvUNet) for a paper-topology preset at ``patch_size``; built on 'meta'.

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
    with torch.device("meta"):
        ours = build_network(architecture, input_channels, num_classes, True, configuration)
        baseline = nnunet_plain_unet(topology, input_channels, num_classes)
    return ours, baseline


def model_folder_networks(model_folder: Path) -> tuple[nn.Module, nn.Module, tuple[int, ...]]:
    """(trained model's network, nnU-Net PlainConvUNet on its topology, (batch, channels, *patch)) on 'meta'.

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
    with torch.device("meta"):
        ours = trainer.build_network_architecture(plans_manager, configuration_manager, input_channels, num_classes, True)
        topology = plans_topology(configuration_manager)
        if convert_conv_op_to_dim(topology["conv_op"]) != len(configuration_manager.patch_size):
            raise ValueError(f"The plans' conv_op does not match the {len(configuration_manager.patch_size)}D patch.")
        baseline = nnunet_plain_unet(topology, input_channels, num_classes)
    shape = (configuration_manager.batch_size, input_channels, *configuration_manager.patch_size)
    return ours, baseline, shape
