"""The paper's published parameter counts and FLOPs, reproduced on the meta device (no memory, seconds).

Numbers from papers/deconver.md: Tables I-III (main configurations) and IV-VIII (ablations on ISLES'22).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nnunet_deconver.analysis.complexity import measure_complexity
from nnunet_deconver.architectures import DeconverUNet
from nnunet_deconver.nnunet.presets import load_preset
from nnunet_deconver.nnunet.profiling import preset_networks

# preset, patch, input channels, classes, paper params (M), paper FLOPs/voxel (K) or None
MAIN_CONFIGURATIONS = [
    ("deconver-isles22-k3", (64, 64, 64), 2, 2, 10.48, 607.0),
    ("deconver-isles22-k5", (64, 64, 64), 2, 2, 11.03, 607.0),
    ("deconver-brats23-k3", (128, 128, 128), 4, 3, 10.55, 167.5),
    ("deconver-brats23-k5", (128, 128, 128), 4, 3, 11.13, 167.5),
    ("deconver-glas-k3", (256, 256), 3, 2, 20.6, 422.8),
    ("deconver-glas-k5", (256, 256), 3, 2, 20.8, 422.8),
]


@pytest.mark.parametrize(("preset", "patch", "channels", "classes", "params_m", "flops_k"), MAIN_CONFIGURATIONS)
def test_paper_configurations(preset, patch, channels, classes, params_m, flops_k) -> None:
    network, _ = preset_networks(load_preset(preset), patch, channels, classes)
    complexity = measure_complexity(network, (1, channels, *patch))
    assert complexity.parameters / 1e6 == pytest.approx(params_m, rel=0.005)
    assert complexity.paper_flops_per_voxel / 1e3 == pytest.approx(flops_k, rel=0.02)


def isles_deconver(**overrides) -> nn.Module:
    """The ISLES'22 ablation base (Tables IV-VIII): L = 4, C0 = 64, k = 3, R = 4, G = C."""
    n_stages = overrides.pop("n_stages", 4)
    features = [min(64 * 2**level, 512) for level in range(n_stages)]
    with torch.device("meta"):
        return DeconverUNet(2, n_stages, features, nn.Conv3d, 3, [1] + [2] * (n_stages - 1), 2, **overrides)


@pytest.mark.parametrize(
    ("overrides", "params_m"),
    [
        ({"ratio": 1}, 7.75), ({"ratio": 2}, 8.66),  # Table IV
        ({"groups": 1}, 57.21), ({"groups": 8}, 16.18),  # Table V
        ({"iterations": 2}, 10.48),  # Table VI
        ({"n_stages": 3}, 2.6), ({"n_stages": 5}, 24.23),  # Table VII
        ({"use_mixer": False}, 6.41), ({"use_mlp": False}, 6.99),  # Table VIII
    ],
)
def test_ablation_parameter_counts(overrides: dict, params_m: float) -> None:
    parameters = sum(p.numel() for p in isles_deconver(**overrides).parameters())
    assert parameters / 1e6 == pytest.approx(params_m, rel=0.005)


def test_a_second_ndc_iteration_costs_what_the_paper_reports() -> None:
    """Table VI: 607.0 K -> 609.06 K FLOPs/voxel; the paper convention must show the same +2.06 K."""
    shape = (1, 2, 64, 64, 64)
    one = measure_complexity(isles_deconver(), shape).paper_flops_per_voxel
    two = measure_complexity(isles_deconver(iterations=2), shape).paper_flops_per_voxel
    assert (two - one) / 1e3 == pytest.approx(609.06 - 607.0, abs=0.05)


def test_nnunet_baseline_matches_the_papers_nnunet_parameter_count() -> None:
    """Table I lists nnU-Net with 22.4 M parameters on the ISLES'22 topology."""
    _, baseline = preset_networks(load_preset("deconver-isles22-k3"), (64, 64, 64), 2, 2)
    assert sum(p.numel() for p in baseline.parameters()) / 1e6 == pytest.approx(22.4, rel=0.005)
