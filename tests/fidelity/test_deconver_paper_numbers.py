"""The paper's published parameter counts and FLOPs, reproduced on the meta device (no memory, seconds).

Numbers from papers/deconver.md: Tables I-III (main configurations) and IV-VIII (ablations on ISLES'22).

Parameters are counted as the authors' reference code (github.com/pashtari/deconver) builds the
network, which is what the paper counted:

* no bias in the stem, in each Deconv Mixer's input projection or in the decoder's skip fusion (the
  paper presets set ``stem_bias``, ``mixer_input_bias`` and ``fusion_bias`` to false);
* one segmentation head, the pointwise convolution on the full-resolution decoder output (the
  reference's ``Deconver(num_deep_supr=False)``, which all the authors' configurations use). Our
  network keeps nnU-Net's deep-supervision heads on the lower decoder stages, so the count leaves
  them out: ``parameter_count(heads=1)``;
* binary tasks (ISLES'22, GlaS) with one sigmoid output channel, as the reference is configured
  (papers/deconver.md IV.A.3: probabilities thresholded); BraTS'23 with three (ET, TC, WT).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nnunet_deconver.analysis.complexity import measure_complexity
from nnunet_deconver.architectures import DeconverUNet
from nnunet_deconver.nnunet.presets import load_preset
from nnunet_deconver.nnunet.profiling import meta_networks, preset_target

# preset, patch, input channels, classes, paper params (M, as printed), paper FLOPs/voxel (K)
MAIN_CONFIGURATIONS = [
    ("deconver-isles22-k3", (64, 64, 64), 2, 1, "10.48", 607.0),
    ("deconver-isles22-k5", (64, 64, 64), 2, 1, "11.03", 607.0),
    ("deconver-brats23-k3", (128, 128, 128), 4, 3, "10.55", 167.5),
    ("deconver-brats23-k5", (128, 128, 128), 4, 3, "11.13", 167.5),
    ("deconver-glas-k3", (256, 256), 3, 1, "20.6", 422.8),
    ("deconver-glas-k5", (256, 256), 3, 1, "20.8", 422.8),
]
# The authors' code in float64 with the same weights as ours (an outside comparison): ISLES'22, 2
# inputs (DWI, ADC), 1 output. With nnU-Net's 2-class softmax head it would be 65 more (10,476,610).
REFERENCE_PARAMETERS = {"deconver-isles22-k3": 10_476_545, "deconver-isles22-k5": 11_028_481}


def assert_matches_printed(parameters: int, printed_m: str) -> None:
    """``parameters`` is what the paper prints in millions, within half a unit of its last digit or 0.5 %.

    The paper's two-decimal counts are sometimes truncated instead of rounded (16,185,857 is printed
    16.18, 6,996,097 is 6.99), hence the 0.5 %; one-decimal ones (2.6) get their whole rounding interval.
    """
    printed = float(printed_m)
    half_unit = 0.5 * 10 ** -len(printed_m.partition(".")[2])
    assert abs(parameters / 1e6 - printed) <= max(half_unit, 0.005 * printed), parameters


@pytest.mark.parametrize(("preset", "patch", "channels", "classes", "params_m", "flops_k"), MAIN_CONFIGURATIONS)
def test_paper_configurations(preset, patch, channels, classes, params_m, flops_k) -> None:
    network, _ = meta_networks(preset_target(load_preset(preset), patch, channels, classes, 1))
    assert_matches_printed(network.parameter_count(heads=1), params_m)
    complexity = measure_complexity(network, (1, channels, *patch))
    assert complexity.paper_flops_per_voxel / 1e3 == pytest.approx(flops_k, rel=0.02)


@pytest.mark.parametrize(("preset", "parameters"), REFERENCE_PARAMETERS.items())
def test_paper_presets_have_exactly_the_reference_parameters(preset: str, parameters: int) -> None:
    """ISLES'22 (Table I): exactly the authors' network, counted with its single full-resolution head."""
    network, _ = meta_networks(preset_target(load_preset(preset), (64, 64, 64), 2, 1, 1))
    assert network.parameter_count(heads=1) == parameters
    assert len(network.decoder.heads) == 3  # nnU-Net's deep supervision keeps one head per decoder stage


def isles_deconver(**overrides) -> nn.Module:
    """The ISLES'22 ablation base (Tables IV-VIII) as the reference builds it: L = 4, C0 = 64, k = 3,
    R = 4, G = C, 2 inputs, 1 output, no bias in the stem, the mixers' input projections or the fusions."""
    n_stages = overrides.pop("n_stages", 4)
    features = [min(64 * 2**level, 512) for level in range(n_stages)]
    with torch.device("meta"):
        return DeconverUNet(
            2, n_stages, features, nn.Conv3d, 3, [1] + [2] * (n_stages - 1), 1,
            mixer_input_bias=False, stem_bias=False, fusion_bias=False, **overrides,
        )


@pytest.mark.parametrize(
    ("overrides", "params_m"),
    [
        ({"ratio": 1}, "7.75"), ({"ratio": 2}, "8.66"),  # Table IV
        ({"groups": 1}, "57.21"), ({"groups": 8}, "16.18"),  # Table V
        ({"iterations": 2}, "10.48"),  # Table VI
        ({"n_stages": 3}, "2.6"), ({"n_stages": 5}, "24.23"),  # Table VII
        ({"use_mixer": False}, "6.41"), ({"use_mlp": False}, "6.99"),  # Table VIII
    ],
)
def test_ablation_parameter_counts(overrides: dict, params_m: str) -> None:
    assert_matches_printed(isles_deconver(**overrides).parameter_count(heads=1), params_m)


def test_a_second_ndc_iteration_costs_what_the_paper_reports() -> None:
    """Table VI: 607.0 K -> 609.06 K FLOPs/voxel; the paper convention must show the same +2.06 K."""
    shape = (1, 2, 64, 64, 64)
    one = measure_complexity(isles_deconver(), shape).paper_flops_per_voxel
    two = measure_complexity(isles_deconver(iterations=2), shape).paper_flops_per_voxel
    assert (two - one) / 1e3 == pytest.approx(609.06 - 607.0, abs=0.05)


def test_nnunet_baseline_matches_the_papers_nnunet_parameter_count() -> None:
    """Table I lists nnU-Net with 22.4 M parameters on the ISLES'22 topology."""
    _, baseline = meta_networks(preset_target(load_preset("deconver-isles22-k3"), (64, 64, 64), 2, 2, 1))
    assert sum(p.numel() for p in baseline.parameters()) / 1e6 == pytest.approx(22.4, rel=0.005)
