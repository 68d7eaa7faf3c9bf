"""The Factorizer paper's Tables 1 and 2 (papers/factorizer.md), reproduced on the meta device."""

from __future__ import annotations

import pytest

from nnunet_deconver.analysis.complexity import measure_complexity
from nnunet_deconver.layers.positional_embedding import PositionalEmbedding
from nnunet_deconver.nnunet.presets import load_preset
from nnunet_deconver.nnunet.profiling import meta_networks, preset_target

KINDS = ("global", "local", "swin")

# Parameters are counted as the authors' reference code (github.com/pashtari/factorizer, the
# paper's configurations) builds the network: stem, downsampling convolutions and skip fusion without
# bias (the paper presets set stem_bias, downsampling_bias and fusion_bias to false), and deep
# supervision at the three highest resolutions only (section 3.2), so our fourth, lowest-resolution
# head is left out: parameter_count(heads=3). That gives 5,855,241 (BraTS) and 7,371,523 (ISLES'22).
# The paper gives parameters to 0.1 M: 5.9 M stands for anything in [5.85, 5.95) M, 7.4 M for
# [7.35, 7.45) M; 1 % of the printed value (+-0.059 M / +-0.074 M) covers the whole rounding
# interval, so the tolerance accepts exactly what the paper's rounding allows plus a little.
# FLOPs: torch.utils.flop_counter (2 FLOPs per multiply-accumulate, every convolution and matrix
# product, NMF's included). The paper's own counter is unknown (MONAI/fvcore-era tools differ in
# what they count: e.g. elementwise operations, transposed convolutions); ours comes out 1.8-2.5 %
# below the printed values, hence 3 %. The Swin - Global difference (the second window set's NMF and
# the rolls) is a sharper check of the NMF cost: 4.16 G against the paper's 4.2 G.
BRATS = ((128, 128, 128), 4, 3)
ISLES22 = ((64, 64, 64), 2, 1)  # DWI + ADC; one sigmoid output thresholded at 0.5 (section 4.2)


@pytest.fixture(scope="module")
def paper_complexity() -> dict[str, object]:
    results = {}
    for dataset, (patch, channels, classes) in {"brats": BRATS, "isles22": ISLES22}.items():
        for kind in KINDS:
            preset = load_preset(f"factorizer-{dataset}-{kind}")
            network, _ = meta_networks(preset_target(preset, patch, channels, classes, 1))
            complexity = measure_complexity(network, (1, channels, *patch))
            results[f"{dataset}-{kind}"] = (network.parameter_count(heads=3), complexity)
    return results


@pytest.mark.parametrize(
    ("name", "params_m", "flops_g"),
    [
        ("brats-global", 5.9, 170.0), ("brats-local", 5.9, 170.0), ("brats-swin", 5.9, 174.2),  # Table 1
        ("isles22-global", 7.4, 28.5), ("isles22-local", 7.4, 28.5), ("isles22-swin", 7.4, 29.1),  # Table 2
    ],
)
def test_paper_parameters_and_flops(paper_complexity, name: str, params_m: float, flops_g: float) -> None:
    parameters, complexity = paper_complexity[name]
    assert parameters / 1e6 == pytest.approx(params_m, rel=0.01)
    assert parameters == {"brats": 5_855_241, "isles22": 7_371_523}[name.split("-")[0]]  # the reference's layout
    assert complexity.flops / 1e9 == pytest.approx(flops_g, rel=0.03)


def test_the_shifted_window_costs_what_the_paper_reports(paper_complexity) -> None:
    """Table 1: Swin - Global = 174.2 G - 170.0 G = 4.2 G (only the matricize differs)."""
    extra = (paper_complexity["brats-swin"][1].flops - paper_complexity["brats-global"][1].flops) / 1e9
    assert extra == pytest.approx(4.2, rel=0.05)
    assert paper_complexity["brats-global"][0] == paper_complexity["brats-swin"][0]


def test_brats_preset_is_the_papers_topology(paper_complexity) -> None:
    """Guard for the numbers above: 5 stages, C = 32 .. 512, E = 8, window 8, embedding at 8^3."""
    network, _ = meta_networks(preset_target(load_preset("factorizer-brats-swin"), *BRATS, 1))
    layers = network.nmf_layers()
    assert len(layers) == 9  # the paper's layers 1-9 (Fig. 8)
    assert [layer.project_in.in_channels for layer in layers] == [32, 64, 128, 256, 512, 256, 128, 64, 32]
    assert {layer.matricizer.head_dim for layer in layers} == {8}
    assert {layer.matricizer.window for layer in layers} == {8}
    (embedding,) = [m for m in network.modules() if isinstance(m, PositionalEmbedding)]
    assert tuple(embedding.embedding.shape) == (1, 512, 8, 8, 8)
