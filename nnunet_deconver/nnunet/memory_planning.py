"""Re-plan patch and batch size for our network's memory, the way nnU-Net's planner does for PlainConvUNet.

nnU-Net's ``ExperimentPlanner`` sizes a configuration for PlainConvUNet on a ~8 GB GPU: it starts from a
patch with the aspect ratio of the spacing (the volume of 256^3, or 2048^2 in 2-D) clipped to the median
image shape, derives the topology from it (``get_pool_and_conv_props``), and while the estimated memory
of a batch of 2 exceeds its target it shrinks the axis that is largest relative to the median shape,
one divisibility step at a time, re-deriving the topology; then it takes the largest batch that fits,
at least 2 and at most what covers 5 % of the dataset's voxels. :func:`replan_configuration` runs the
same search with our network's memory: the peak of one fp16-autocast training step estimated on fake
tensors (:func:`~nnunet_deconver.analysis.training_step_cost.peak_step_bytes`) against a target in GiB.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props
from torch import nn

from nnunet_deconver.analysis.training_step_cost import peak_step_bytes

MIN_FEATURE_MAP_EDGE = 4  # nnU-Net's UNet_featuremap_min_edge_length
MIN_BATCH_SIZE = 2  # nnU-Net's UNet_min_batch_size
MAX_DATASET_COVERED = 0.05  # nnU-Net's max_dataset_covered

NetworkForConfiguration = Callable[[dict[str, Any]], nn.Module]
"""Builds the network to train for a plans configuration dict (called under fake-tensor mode)."""


def initial_patch_size(spacing: list[float], median_shape: list[int]) -> list[int]:
    """nnU-Net's starting patch: the spacing's aspect ratio at the volume of 256^3 (2048^2 in 2-D), clipped to
    the median shape."""
    inverse = 1 / np.array(spacing, dtype=np.float64)
    volume = 256**3 if len(spacing) == 3 else 2048**2
    scaled = inverse * (volume / np.prod(inverse)) ** (1 / len(spacing))
    return [min(round(size), median) for size, median in zip(scaled, median_shape)]


def _with_topology(configuration: dict[str, Any], patch_size: list[int]) -> tuple[dict[str, Any], list[int]]:
    """A copy of ``configuration`` with nnU-Net's topology for ``patch_size``; also the shape divisor per axis."""
    spacing = configuration["spacing"]
    _, strides, kernels, patch, divisor = get_pool_and_conv_props(spacing, patch_size, MIN_FEATURE_MAP_EDGE, 999999)
    planned = copy.deepcopy(configuration)
    arch_kwargs = planned["architecture"]["arch_kwargs"]
    features = arch_kwargs["features_per_stage"]
    n_stages = len(strides)
    arch_kwargs.update(
        n_stages=n_stages, kernel_sizes=[list(k) for k in kernels], strides=[list(s) for s in strides],
        features_per_stage=[min(features[0] * 2**level, max(features)) for level in range(n_stages)],
    )
    for key in ("n_conv_per_stage", "n_blocks_per_stage"):
        if key in arch_kwargs:
            arch_kwargs[key] = [arch_kwargs[key][min(level, len(arch_kwargs[key]) - 1)] for level in range(n_stages)]
    if "n_conv_per_stage_decoder" in arch_kwargs:
        decoder = arch_kwargs["n_conv_per_stage_decoder"]
        arch_kwargs["n_conv_per_stage_decoder"] = [decoder[min(level, len(decoder) - 1)] for level in range(n_stages - 1)]
    planned["patch_size"] = [int(size) for size in patch]
    return planned, [int(d) for d in divisor]


def _peak(network_for: NetworkForConfiguration, configuration: dict[str, Any], input_channels: int, batch: int) -> int:
    shape = (batch, input_channels, *configuration["patch_size"])
    return peak_step_bytes(lambda: network_for(configuration), shape, torch.float16)


def replan_configuration(
    configuration: dict[str, Any],
    network_for: NetworkForConfiguration,
    *,
    target_gib: float,
    input_channels: int,
    num_training_cases: int,
    progress: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """``configuration`` with nnU-Net's patch search and batch rule applied to our network's estimated peak.

    Args:
        configuration: a plans configuration as nnUNetv2_plan_and_preprocess wrote it (with ``spacing``,
            ``median_image_size_in_voxels`` and nnU-Net's ``architecture``).
        network_for: builds the network trained on a configuration dict.
        target_gib: GPU memory the training step may take (its estimated peak, fp16 autocast).
        input_channels: image channels of the dataset.
        num_training_cases: the dataset's training cases (for the 5 % batch cap).
        progress: receives one line per estimate.

    Raises:
        ValueError: not even the smallest patch nnU-Net's topology allows fits with a batch of 2.
    """
    target = target_gib * 2**30
    median = [int(size) for size in configuration["median_image_size_in_voxels"]]
    planned, divisor = _with_topology(configuration, initial_patch_size(configuration["spacing"], median))
    while True:
        peak = _peak(network_for, planned, input_channels, MIN_BATCH_SIZE)
        progress(f"patch {planned['patch_size']}, batch {MIN_BATCH_SIZE}: estimated peak {peak / 2**30:.2f} GiB")
        if peak <= target:
            break
        patch = list(planned["patch_size"])
        axis = int(np.argsort([p / m for p, m in zip(patch, median)])[-1])
        # nnU-Net's two-step shrink: one divisor step, the divisor of the smaller patch, that step again
        trial = list(patch)
        trial[axis] -= divisor[axis]
        _, smaller_divisor = _with_topology(configuration, trial) if trial[axis] > 0 else (None, divisor)
        trial = list(patch)
        trial[axis] -= smaller_divisor[axis]
        candidate, candidate_divisor = _with_topology(configuration, trial) if trial[axis] > 0 else (None, divisor)
        if candidate is None or candidate["architecture"]["arch_kwargs"]["n_stages"] < 2:
            raise ValueError(
                f"even the patch {patch} (batch {MIN_BATCH_SIZE}) needs about {peak / 2**30:.2f} GiB, more than the "
                f"--gpu-memory-target {target_gib:g} GiB, and no smaller patch keeps a U-Net of 2 stages; give more "
                f"memory or a lighter network (activation_checkpointing 'full', fewer features)."
            )
        planned, divisor = candidate, candidate_divisor
    single = _peak(network_for, planned, input_channels, 1)
    per_sample = max(peak - single, 1)
    batch = MIN_BATCH_SIZE + int((target - peak) // per_sample)
    dataset_voxels = math.prod(median) * num_training_cases
    covered = round(dataset_voxels * MAX_DATASET_COVERED / math.prod(planned["patch_size"]))
    planned["batch_size"] = max(min(batch, covered), MIN_BATCH_SIZE)
    while planned["batch_size"] > MIN_BATCH_SIZE:  # the per-sample estimate is linear; check the batch itself
        final = _peak(network_for, planned, input_channels, planned["batch_size"])
        progress(f"patch {planned['patch_size']}, batch {planned['batch_size']}: estimated peak {final / 2**30:.2f} GiB")
        if final <= target:
            break
        planned["batch_size"] -= 1
    return planned
