"""FactorizerUNet (papers/factorizer.md section 3.2, Fig. 1) against nnU-Net's network contract and the
paper's published sizes.

nnU-Net builds the network from plans (per-stage kernels and strides, possibly anisotropic, patch
sizes that are multiples of the strides' product but not of the Factorizer window), toggles
``decoder.deep_supervision``, expects deep-supervision outputs highest resolution first, and trains
with DDP without ``find_unused_parameters``. Section 4.5's inference-time knobs (T, R, solver,
short-circuited layers) are exercised on a built network.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from support.learning import (
    assert_a_few_adam_steps_reduce_the_loss,
    assert_deep_supervision_backward_reaches_every_parameter,
)

from nnunet_deconver.architectures.factorizer_unet import FactorizerUNet
from nnunet_deconver.blocks.wrapped_nmf import WrappedNMF
from nnunet_deconver.layers.nmf import nmf
from nnunet_deconver.layers.positional_embedding import PositionalEmbedding

KINDS = ("global", "local", "swin")
ANISO_KERNELS_3D = [[1, 3, 3], [3, 3, 3], [3, 3, 3]]
ANISO_STRIDES_3D = [[1, 1, 1], [1, 2, 2], [2, 2, 2]]

# (conv_op, kernel sizes, strides, patch): multiples of the strides' product whose levels are not all
# multiples of the window 4 (odd sizes at the bottleneck).
TOPOLOGIES = [
    pytest.param(nn.Conv2d, 3, [1, 2, 2], (20, 36), id="2d-20x36"),
    pytest.param(nn.Conv2d, [[3, 3]] * 3, [[1, 1], [2, 2], [1, 2]], (6, 28), id="2d-aniso-6x28"),
    pytest.param(nn.Conv3d, ANISO_KERNELS_3D, ANISO_STRIDES_3D, (6, 20, 12), id="3d-aniso-6x20x12"),
]


def tiny_factorizer(conv_op, kernel_sizes, strides, deep_supervision: bool, matricize: str = "swin",
                    patch_size=None, num_classes: int = 3, **kwargs) -> FactorizerUNet:
    n_stages = len(strides)
    return FactorizerUNet(
        input_channels=2, n_stages=n_stages, features_per_stage=[8 * 2**i for i in range(n_stages)],
        conv_op=conv_op, kernel_sizes=kernel_sizes, strides=strides, num_classes=num_classes,
        deep_supervision=deep_supervision, matricize=matricize, head_dim=4, window=4,
        patch_size=patch_size, **kwargs,
    )


def expected_sizes(strides, patch) -> list[tuple[int, ...]]:
    """Patch divided by the cumulative stride of decoder levels 0 .. n_stages - 2."""
    sizes, cumulative = [], [1] * len(patch)
    for stride in strides[:-1]:
        per_axis = [stride] * len(patch) if isinstance(stride, int) else stride
        cumulative = [c * s for c, s in zip(cumulative, per_axis)]
        sizes.append(tuple(n // c for n, c in zip(patch, cumulative)))
    return sizes


def bridge_size(strides, patch) -> tuple[int, ...]:
    divisor = [1] * len(patch)
    for stride in strides:
        per_axis = [stride] * len(patch) if isinstance(stride, int) else stride
        divisor = [d * s for d, s in zip(divisor, per_axis)]
    return tuple(n // d for n, d in zip(patch, divisor))


# --------------------------------------------------------------------------------------------------
# Shapes, deep supervision, positional embedding
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("matricize", KINDS)
@pytest.mark.parametrize(("conv_op", "kernel_sizes", "strides", "patch"), TOPOLOGIES)
def test_output_shapes_with_and_without_deep_supervision(conv_op, kernel_sizes, strides, patch, matricize) -> None:
    """DS on: n_stages - 1 logit maps, highest resolution first; DS off: one map equal to the first."""
    torch.manual_seed(0)
    net = tiny_factorizer(conv_op, kernel_sizes, strides, True, matricize, patch_size=patch).eval()
    x = torch.randn(1, 2, *patch)
    with torch.no_grad():
        outputs = net(x)
        assert isinstance(outputs, list)
        assert [tuple(o.shape) for o in outputs] == [(1, 3, *size) for size in expected_sizes(strides, patch)]
        net.decoder.deep_supervision = False
        single = net(x)
    assert isinstance(single, torch.Tensor) and single.shape == (1, 3, *patch)
    torch.testing.assert_close(single, outputs[0])
    assert torch.isfinite(single).all()
    # The stem follows the plans' first kernel, e.g. (1, 3, 3).
    first_kernel = kernel_sizes if isinstance(kernel_sizes, int) else kernel_sizes[0]
    assert net.encoder.stem.kernel_size == tuple(first_kernel if isinstance(first_kernel, list) else [first_kernel] * len(patch))


def test_the_topologies_really_pad_windows() -> None:
    """Guard for the shape test: every topology has a level whose size is no multiple of its window
    (min(4, n) per axis), so padded windows and column masks are exercised."""
    for param in TOPOLOGIES:
        strides, patch = param.values[2], param.values[3]
        levels = [patch, *expected_sizes(strides, patch)[1:], bridge_size(strides, patch)]
        assert any(n % min(4, n) for size in levels for n in size), levels


@pytest.mark.parametrize(("conv_op", "kernel_sizes", "strides", "patch"), TOPOLOGIES)
def test_positional_embedding_is_sized_from_the_patch_and_interpolated_at_other_sizes(
    conv_op, kernel_sizes, strides, patch
) -> None:
    torch.manual_seed(1)
    net = tiny_factorizer(conv_op, kernel_sizes, strides, False, "swin", patch_size=patch).eval()
    embeddings = [m for m in net.modules() if isinstance(m, PositionalEmbedding)]
    assert len(embeddings) == 1
    (embedding,) = embeddings
    assert embedding.embedding.shape == (1, 32, *bridge_size(strides, patch))
    # It sits in the bridge (the deepest encoder stage), right after the downsampling convolution.
    assert any(m is embedding for m in net.encoder.stages[-1].modules())
    divisor = net.size_divisor
    other = tuple(n + 2 * d for n, d in zip(patch, divisor))  # another legal size
    with torch.no_grad():
        out = net(torch.randn(1, 2, *other))
    assert out.shape == (1, 3, *other) and torch.isfinite(out).all()


def test_positional_embedding_adds_p_and_resamples_it_linearly() -> None:
    layer = PositionalEmbedding(3, (4, 6))
    x = torch.randn(2, 3, 4, 6)
    torch.testing.assert_close(layer(x), x + layer.embedding)
    with torch.no_grad():
        layer.embedding.copy_(torch.arange(3.0).reshape(1, 3, 1, 1).expand(1, 3, 4, 6))
    y = torch.randn(2, 3, 8, 10)
    # A per-channel constant embedding resamples to the same constants at any size.
    torch.testing.assert_close(layer(y), y + torch.arange(3.0).reshape(1, 3, 1, 1))


def test_no_positional_embedding_without_patch_size_or_when_disabled() -> None:
    for kwargs in ({"patch_size": None}, {"patch_size": (16, 16), "positional_embedding": False}):
        net = FactorizerUNet(1, 3, [8, 16, 32], nn.Conv2d, 3, [1, 2, 2], 2, head_dim=4, window=4, **kwargs)
        assert not any(isinstance(m, PositionalEmbedding) for m in net.modules())


def test_patch_too_small_for_the_strides_raises() -> None:
    with pytest.raises(ValueError, match="too small"):
        FactorizerUNet(1, 3, [8, 16, 32], nn.Conv2d, 3, [1, 2, 2], 2, head_dim=4, window=2, patch_size=(2, 16))


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"matricize": "tiled"}, "matricize='tiled'"),
        ({"head_dim": 3}, "head_dim=3"),
        ({"head_dim": 0}, "head_dim=0"),
        ({"window": 0}, "window=0"),
        ({"window": [4, 4, 4]}, "window=[4, 4, 4]"),
        ({"window": 64}, "window=64"),  # larger than the 32 x 32 patch
        ({"window": [4, 40], "matricize": "local"}, "window=[4, 40]"),
        ({"nmf_rank": 0}, "nmf_rank=0"),
        ({"nmf_iterations": -1}, "nmf_iterations=-1"),
        ({"nmf_solver": "als"}, "nmf_solver='als'"),
        ({"mlp_ratio": 0}, "mlp_ratio=0"),
        ({"blocks_per_stage": -1}, "blocks_per_stage=-1"),
        ({"blocks_per_decoder_stage": [1, 2, 3]}, "blocks_per_decoder_stage=[1, 2, 3]"),
        ({"use_nmf": False, "use_mlp": False}, "use_nmf=False"),
        ({"positional_embedding": "yes"}, "positional_embedding='yes'"),
        ({"patch_size": [32]}, "patch_size=[32]"),
        ({"downsampling_bias": None}, "downsampling_bias=None"),
    ],
)
def test_bad_hyperparameters_are_refused_in_one_line(kwargs: dict, named: str) -> None:
    """Raised by the constructor on the meta device (where a registry checks plans before writing them)."""
    arguments = {"input_channels": 1, "n_stages": 3, "features_per_stage": [8, 16, 32], "conv_op": nn.Conv2d,
                 "kernel_sizes": 3, "strides": [1, 2, 2], "num_classes": 2, "head_dim": 4, "window": 4,
                 "patch_size": (32, 32), **kwargs}
    with torch.device("meta"), pytest.raises(ValueError) as error:
        FactorizerUNet(**arguments)
    message = str(error.value)
    assert message.startswith(f"{named} is invalid: ") and ", e.g. " in message and "\n" not in message, message


def test_a_window_larger_than_the_patch_names_one_that_fits() -> None:
    with pytest.raises(ValueError) as error:
        FactorizerUNet(1, 3, [8, 16, 32], nn.Conv3d, 3, [1, 2, 2], 2, head_dim=4, window=8, patch_size=(4, 32, 32))
    assert str(error.value) == "window=8 is invalid: windows must fit in the patch [4, 32, 32], e.g. [4, 8, 8]."


def test_windows_larger_than_deep_feature_maps_are_fine() -> None:
    """Matricize clamps a window to a smaller feature map; only the patch itself bounds P (and Global has none)."""
    with torch.device("meta"):
        FactorizerUNet(1, 3, [8, 16, 32], nn.Conv2d, 3, [1, 2, 2], 2, head_dim=4, window=32, patch_size=(32, 32))
        FactorizerUNet(1, 3, [8, 16, 32], nn.Conv2d, 3, [1, 2, 2], 2, head_dim=4, matricize="global", window=64,
                       patch_size=(32, 32))


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("matricize", KINDS)
@pytest.mark.parametrize(
    ("conv_op", "kernel_sizes", "strides", "patch"),
    [pytest.param(nn.Conv2d, 3, [1, 2, 2], (12, 20), id="2d"),
     pytest.param(nn.Conv3d, ANISO_KERNELS_3D, ANISO_STRIDES_3D, (4, 12, 8), id="3d-aniso")],
)
def test_every_parameter_gets_a_finite_gradient_with_deep_supervision(conv_op, kernel_sizes, strides, patch,
                                                                      matricize) -> None:
    torch.manual_seed(2)
    net = tiny_factorizer(conv_op, kernel_sizes, strides, True, matricize, patch_size=patch)
    assert_deep_supervision_backward_reaches_every_parameter(net, patch)
    # The learning signal really passes through the NMF layers and reaches the embedding.
    assert all(layer.project_in.weight.grad.abs().sum() > 0 for layer in net.nmf_layers())
    (embedding,) = [m for m in net.modules() if isinstance(m, PositionalEmbedding)]
    assert embedding.embedding.grad.abs().sum() > 0


def test_a_few_adam_steps_reduce_the_loss() -> None:
    """15 Adam steps on a fixed 2-D batch cut cross-entropy below 70 % of its start."""
    torch.manual_seed(3)
    net = tiny_factorizer(nn.Conv2d, 3, [1, 2, 2], False, "swin", patch_size=(16, 16), num_classes=2)
    assert_a_few_adam_steps_reduce_the_loss(net)


# --------------------------------------------------------------------------------------------------
# Section 4.5: inference-time knobs, layer numbering, components
# --------------------------------------------------------------------------------------------------


def _knob_net(matricize: str = "swin") -> tuple[FactorizerUNet, torch.Tensor]:
    torch.manual_seed(4)
    net = tiny_factorizer(nn.Conv2d, 3, [1, 2, 2], False, matricize, patch_size=(12, 20)).eval()
    return net, torch.randn(1, 2, 12, 20)


def test_nmf_layers_are_numbered_encoder_high_res_to_bridge_then_decoder() -> None:
    net = FactorizerUNet(1, 4, [8, 16, 32, 64], nn.Conv2d, 3, [1, 2, 2, 2], 2, head_dim=4, window=4)
    layers = net.nmf_layers()
    names = {id(module): name for name, module in net.named_modules()}
    assert [names[id(layer)].split(".")[:3] for layer in layers] == [
        ["encoder", "stages", "0"], ["encoder", "stages", "1"], ["encoder", "stages", "2"],
        ["encoder", "stages", "3"],  # the bridge: layer 4 here, layer 5 in the paper's five-stage model
        ["decoder", "stages", "0"], ["decoder", "stages", "1"], ["decoder", "stages", "2"],
    ]
    assert [layer.project_in.in_channels for layer in layers] == [8, 16, 32, 64, 32, 16, 8]


def test_configure_nmf_changes_iterations_rank_and_solver() -> None:
    net, x = _knob_net()
    with torch.no_grad():
        original = net(x)
        net.configure_nmf(iterations=2)
        assert all(layer.nmf.iterations == 2 for layer in net.nmf_layers())
        fewer_iterations = net(x)
        net.configure_nmf(iterations=5, solver="mu")  # R = 1: MU and HALS are the same update (eq. 14)
        assert all(layer.nmf.solver == "mu" for layer in net.nmf_layers())
        rank_one_mu = net(x)
        net.configure_nmf(rank=2)
        assert all(layer.nmf.rank == 2 for layer in net.nmf_layers())
        rank_two_mu = net(x)
        net.configure_nmf(solver="hals")
        rank_two_hals = net(x)
        net.configure_nmf(rank=1)
        restored = net(x)
    assert not torch.allclose(fewer_iterations, original)
    torch.testing.assert_close(rank_one_mu, original, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(rank_two_mu, original)
    assert not torch.allclose(rank_two_hals, rank_two_mu)
    assert torch.equal(restored, original)


def test_skip_layers_short_circuits_exactly_the_named_layers() -> None:
    net, x = _knob_net()
    layers = net.nmf_layers()
    with torch.no_grad():
        original = net(x)
        net.configure_nmf(skip_layers=[1, len(layers)])
        assert [layer.nmf_enabled for layer in layers] == [False] + [True] * (len(layers) - 2) + [False]
        skipped = net(x)
        net.configure_nmf(skip_layers=[3])
        bridge_skipped = net(x)
        net.configure_nmf()  # re-enables every layer
        restored = net(x)
    assert all(layer.nmf_enabled for layer in layers)
    assert not torch.allclose(skipped, original) and not torch.allclose(bridge_skipped, original)
    assert torch.equal(restored, original)


@pytest.mark.parametrize("bad", [[0], [6], [-1], [1, 99]])
def test_skip_layers_out_of_range_raise(bad) -> None:
    net, _ = _knob_net()
    assert len(net.nmf_layers()) == 5
    with pytest.raises(ValueError, match="do not exist"):
        net.configure_nmf(skip_layers=bad)
    with pytest.raises(ValueError):
        net.configure_nmf(solver="als")
    with pytest.raises(ValueError):
        net.configure_nmf(rank=0)


@pytest.mark.parametrize("matricize", KINDS)
def test_a_short_circuited_layer_is_the_block_with_nmf_replaced_by_the_identity(matricize: str) -> None:
    """nmf_enabled = False must equal eq. (6) with NMF(.) := identity (Matricize and Dematricize cancel,
    padded windows included)."""
    torch.manual_seed(5)
    layer = WrappedNMF(8, nn.Conv2d, matricize=matricize, head_dim=4, window=4)
    x = torch.randn(2, 8, 10, 7)
    with torch.no_grad():
        layer.nmf_enabled = False
        skipped = layer(x)
        layer.nmf_enabled = True
        layer.nmf.forward = lambda matrices, column_mask=None: matrices
        identity = layer(x)
    torch.testing.assert_close(skipped, identity, rtol=0, atol=1e-6)


@pytest.mark.parametrize("rank", [1, 2])
@pytest.mark.parametrize("matricize", KINDS)
def test_spatial_components_shape(matricize: str, rank: int) -> None:
    net, x = _knob_net(matricize)
    net.configure_nmf(rank=rank)
    with torch.no_grad():
        for layer, channels, size in zip(net.nmf_layers(), [8, 16, 32], [(12, 20), (6, 10), (3, 5)]):
            features = torch.randn(1, channels, *size)
            components = layer.spatial_components(features)
            assert components.shape == (1, (channels // 4) * rank, *size)
            assert (components >= 0).all()


def test_global_spatial_components_are_the_rows_of_g() -> None:
    """Channel h R + r at a voxel is G[voxel, r] of head h (section 4.3.1, Fig. 6)."""
    torch.manual_seed(6)
    layer = WrappedNMF(8, nn.Conv2d, matricize="global", head_dim=4, rank=2)
    x = torch.randn(2, 8, 5, 6)
    with torch.no_grad():
        components = layer.spatial_components(x)
        matrices = torch.relu(layer.project_in(x)).reshape(2, 2, 4, 30)
        _, g = nmf(matrices, rank=2, iterations=5, solver="hals")
    for h in range(2):
        for r in range(2):
            torch.testing.assert_close(components[:, h * 2 + r].reshape(2, 30), g[:, h, :, r])
