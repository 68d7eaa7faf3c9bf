"""SoftShrinkage against papers/segmentation-cnns-are-denoising-models.md eq. (17)-(18), Fig. 1's alpha.

The reference is a per-element transcription of eq. (18) in plain Python floats, with the authors'
leaky-ReLU variant written out as max(v, 0) + leak * min(v, 0).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nnunet_deconver.layers.shrinkage import (
    AUTHORS_LEAKS,
    SoftShrinkage,
    set_shrinkage_scale,
    shrinkage_modules,
    shrinkage_scale,
)

LEAKS = [pytest.param((0.0, 0.0), id="eq18"), pytest.param(AUTHORS_LEAKS, id="authors-leaks")]
SHAPES = [pytest.param((2, 3, 7), id="1d"), pytest.param((2, 3, 5, 4), id="2d"), pytest.param((1, 3, 3, 4, 2), id="3d")]


def _eq18(x: float, b: float, leaks: tuple[float, float]) -> float:
    def relu(v: float, leak: float) -> float:
        return max(v, 0.0) + leak * min(v, 0.0)

    return relu(x - b, leaks[0]) - relu(-x - b, leaks[1])


def _shrinkage(channels: int, *, leaks: tuple[float, float] = (0.0, 0.0), seed: int = 0) -> SoftShrinkage:
    """A layer with thresholds of both signs (trained models have 40-55 % negative ones)."""
    layer = SoftShrinkage(channels, leaks=leaks).double()
    with torch.no_grad():
        layer.threshold.copy_(torch.randn(channels, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return layer


def _network(seed: int = 0) -> nn.Sequential:
    """An encoder-decoder of bias-free convs and shrinkages, as the SUM's (float64)."""
    torch.manual_seed(seed)
    convs = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False) for c_in, c_out in ((1, 4), (4, 4), (4, 1))]
    layers = [layer for i, conv in enumerate(convs) for layer in (conv, _shrinkage(conv.out_channels, seed=i))]
    return nn.Sequential(*layers).double()


def test_thresholds_start_at_zero_one_per_channel() -> None:
    layer = SoftShrinkage(5)
    assert [name for name, _ in layer.named_parameters()] == ["threshold"]
    assert torch.equal(layer.threshold, torch.zeros(5))
    assert layer.alpha == 1.0
    assert list(layer.state_dict()) == ["threshold"]


@pytest.mark.parametrize("leaks", LEAKS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_matches_eq18_transcription(leaks, shape, alpha: float) -> None:
    layer = _shrinkage(shape[1], leaks=leaks)
    layer.alpha = alpha
    x = 2 * torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = layer(x)
    thresholds = layer.threshold.tolist()
    for index in torch.cartesian_prod(*(torch.arange(n) for n in shape)).tolist():
        expected = _eq18(x[tuple(index)].item(), alpha * thresholds[index[1]], leaks)
        assert out[tuple(index)].item() == pytest.approx(expected, abs=1e-12)


def test_nonnegative_thresholds_are_eq17_softshrink() -> None:
    layer = _shrinkage(3)
    with torch.no_grad():
        layer.threshold.abs_()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    for c, threshold in enumerate(layer.threshold.tolist()):
        assert torch.allclose(layer(x)[:, c], F.softshrink(x[:, c], threshold), atol=1e-15)


def test_negative_thresholds_follow_eq18_not_eq17() -> None:
    """b = -1, x = 0.5: eq. (18) gives (1.5)_+ - (0.5)_+ = 1 (= 2x), eq. (17) would give 1.5."""
    layer = SoftShrinkage(1).double()
    with torch.no_grad():
        layer.threshold.fill_(-1.0)
    assert layer(torch.full((1, 1, 1), 0.5, dtype=torch.float64)).item() == 1.0


def test_alpha_zero_is_the_identity() -> None:
    layer = _shrinkage(3)
    layer.alpha = 0.0
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    assert torch.equal(layer(x), x)


def test_alpha_zero_with_the_authors_leaks_has_their_slopes() -> None:
    """Slope 1 + 0.01 for x > 0 and 1 + 0.001 for x < 0 (sum-facts: only nearly the identity)."""
    layer = _shrinkage(3, leaks=AUTHORS_LEAKS)
    layer.alpha = 0.0
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    expected = torch.where(x > 0, (1 + AUTHORS_LEAKS[1]) * x, (1 + AUTHORS_LEAKS[0]) * x)
    assert torch.allclose(layer(x), expected, rtol=0, atol=1e-15)


def test_encoder_decoder_is_linear_at_alpha_zero_only() -> None:
    network = _network()
    generator = torch.Generator().manual_seed(2)
    x, y = (torch.randn(2, 1, 12, 12, generator=generator, dtype=torch.float64) for _ in range(2))
    a, b = 1.7, -0.6
    with shrinkage_scale(network, 0.0):
        assert torch.allclose(network(a * x + b * y), a * network(x) + b * network(y), rtol=0, atol=1e-12)
        assert torch.allclose(network(-3.0 * x), -3.0 * network(x), rtol=0, atol=1e-12)
    assert not torch.allclose(network(a * x + b * y), a * network(x) + b * network(y), atol=1e-3)


def test_gradcheck_input_and_thresholds() -> None:
    layer = _shrinkage(3, leaks=AUTHORS_LEAKS)
    layer.alpha = 0.7
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    threshold = layer.threshold.detach().clone().requires_grad_()

    def shrink(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(layer, {"threshold": threshold}, (x,))

    assert torch.autograd.gradcheck(shrink, (x, threshold))


def test_scale_sets_every_module_and_restores_each_value() -> None:
    network = _network()
    modules = shrinkage_modules(network)
    assert len(modules) == 3
    for module, alpha in zip(modules, (1.0, 0.5, 0.25)):
        module.alpha = alpha
    with shrinkage_scale(network, 0.0) as scaled:
        assert scaled is network
        assert [module.alpha for module in modules] == [0.0, 0.0, 0.0]
    assert [module.alpha for module in modules] == [1.0, 0.5, 0.25]


def test_scale_restores_after_an_exception() -> None:
    network = _network()
    with pytest.raises(RuntimeError, match="inside"):
        with shrinkage_scale(network, 0.0):
            raise RuntimeError("inside")
    assert [module.alpha for module in shrinkage_modules(network)] == [1.0, 1.0, 1.0]


def test_set_scale_and_invalid_alpha() -> None:
    network = _network()
    set_shrinkage_scale(network, 0.3)
    assert [module.alpha for module in shrinkage_modules(network)] == [0.3, 0.3, 0.3]
    with pytest.raises(ValueError, match="finite"):
        with shrinkage_scale(network, float("nan")):
            pass
    assert [module.alpha for module in shrinkage_modules(network)] == [0.3, 0.3, 0.3]


def test_bad_use_gets_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no SoftShrinkage layers"):
        set_shrinkage_scale(nn.Conv2d(1, 1, 3), 0.0)
    with pytest.raises(ValueError, match="leaks"):
        SoftShrinkage(2, leaks=(-0.1, 0.0))
    with pytest.raises(ValueError, match=r"expects \(B, 2, \*spatial\)"):
        SoftShrinkage(2)(torch.zeros(1, 3, 4))


def test_cpu_autocast_bfloat16_is_finite() -> None:
    conv = nn.Conv2d(2, 4, 3, padding=1, bias=False)
    layer = SoftShrinkage(4, leaks=AUTHORS_LEAKS)
    with torch.no_grad():
        layer.threshold.normal_()
    x = torch.randn(2, 2, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(conv(x))
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(out).all()
    out.float().square().sum().backward()
    assert layer.threshold.grad.dtype == torch.float32
    assert torch.isfinite(layer.threshold.grad).all() and layer.threshold.grad.abs().sum() > 0
