"""``nnunet-deconver plan --gpu-memory-target``: nnU-Net's patch search and batch rule on our network's memory."""

from __future__ import annotations

import json
import math

import pytest

import torch

from nnunet_deconver.analysis.training_step_cost import peak_step_bytes
from nnunet_deconver.nnunet.derived_plans import MemoryTarget, derive_plans
from nnunet_deconver.nnunet.memory_planning import initial_patch_size, replan_configuration
from nnunet_deconver.nnunet.network_from_plans import build_network
from nnunet_deconver.nnunet.presets import load_preset
from support.plans import plans_configuration

PRESET = load_preset("deconver-3d-k3")


def _configuration(median: list[int], spacing: list[float]) -> dict:
    configuration = plans_configuration(3, features=(8, 16, 32, 32, 32), patch=[32, 32, 32])
    configuration.update(spacing=spacing, median_image_size_in_voxels=median)
    return configuration


def _network_for(candidate: dict):
    return build_network(PRESET.architecture(candidate["architecture"], "3d_fullres", candidate), 1, 2, True, candidate)


def _replan(configuration: dict, gib: float, cases: int = 20) -> dict:
    return replan_configuration(configuration, _network_for, target_gib=gib, input_channels=1,
                                num_training_cases=cases)


def _peak_gib(configuration: dict, batch: int) -> float:
    shape = (batch, 1, *configuration["patch_size"])
    return peak_step_bytes(lambda: _network_for(configuration), shape, torch.float16) / 2**30


def test_initial_patch_follows_the_spacing_and_the_median_shape() -> None:
    assert initial_patch_size([1.0, 1.0, 1.0], [300, 300, 300]) == [256, 256, 256]
    # thick slices: the volume of 256^3 with the spacing's aspect ratio (123 x 369 x 369), then the median clips
    assert initial_patch_size([3.0, 1.0, 1.0], [500, 500, 500]) == [123, 369, 369]
    assert initial_patch_size([3.0, 1.0, 1.0], [40, 300, 300]) == [40, 300, 300]
    assert initial_patch_size([0.5, 0.5], [3000, 1000]) == [2048, 1000]


@pytest.mark.slow
@pytest.mark.parametrize("spacing,median,target", [([1.0, 1.0, 1.0], [32, 48, 40], 0.1),
                                                   ([2.5, 1.0, 1.0], [16, 48, 40], 0.05)])
def test_replanned_patch_fits_the_target_with_nnunets_divisibility_and_batch_rules(spacing, median, target) -> None:
    configuration = _configuration(median, spacing)
    small = _replan(configuration, target)
    patch, strides = small["patch_size"], small["architecture"]["arch_kwargs"]["strides"]
    divisor = [math.prod(axis) for axis in zip(*strides)]
    assert all(p % d == 0 for p, d in zip(patch, divisor))
    assert all(p <= m for p, m in zip(patch, median)) and math.prod(patch) < math.prod(median)
    assert small["batch_size"] == 2  # 20 cases: 5 % of the dataset's voxels caps the batch at nnU-Net's minimum
    assert _peak_gib(small, 2) <= target
    assert small["data_identifier"] == configuration["data_identifier"]  # same preprocessed data
    roomy = _replan(configuration, 3 * target, cases=2000)
    assert math.prod(roomy["patch_size"]) >= math.prod(patch) and roomy["batch_size"] > 2
    assert _peak_gib(roomy, roomy["batch_size"]) <= 3 * target < _peak_gib(roomy, roomy["batch_size"] + 1)


@pytest.mark.slow
def test_a_target_nothing_fits_is_refused_in_one_line() -> None:
    with pytest.raises(ValueError, match=r"^even the patch .* more than the --gpu-memory-target 0.0001 GiB"):
        _replan(_configuration([16, 16, 16], [1.0, 1.0, 1.0]), 0.0001)


def test_derived_plans_record_the_target_and_carry_the_replanned_configuration() -> None:
    plans = {"plans_name": "nnUNetPlans",
             "configurations": {"3d_fullres": _configuration([16, 32, 32], [1.0, 1.0, 1.0])}}
    lines: list[str] = []
    derived = derive_plans(plans, [PRESET], "nnUNetDeconverPlans_0.25GB", "nnUNetPlans",
                           MemoryTarget(0.25, 1, 2, 20, progress=lines.append))
    configuration = derived["configurations"]["3d_fullres"]
    assert configuration["architecture"]["network_class_name"].endswith("DeconverUNet")
    assert derived["nnunet_deconver"]["gpu_memory_target_gib"] == 0.25
    assert any("estimated peak" in line for line in lines)
    assert json.loads(json.dumps(derived)) == derived
