"""DeconverUNet (papers/deconver.md section III.C, Fig. 1) against nnU-Net's network contract.

nnU-Net builds the network from plans (per-stage kernel sizes and strides, possibly anisotropic,
patch sizes that are multiples of the strides' product), toggles ``decoder.deep_supervision`` at
runtime, expects deep-supervision outputs highest resolution first, and trains with DDP without
``find_unused_parameters`` (every parameter must receive a gradient).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from support.learning import (
    assert_a_few_adam_steps_reduce_the_loss,
    assert_deep_supervision_backward_reaches_every_parameter,
)

from nnunet_deconver.architectures import DeconverUNet
from nnunet_deconver.layers import NonnegativeDeconvolution

ANISO_KERNELS_3D = [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]]
ANISO_STRIDES_3D = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [1, 2, 2]]

# (conv_op, kernel_sizes, strides, patch size); patch sizes chosen so the bottleneck is odd (5, 7, ...).
TOPOLOGIES = [
    pytest.param(nn.Conv2d, 3, [1, 2, 2, 2], (40, 56), id="2d-iso-40x56"),
    pytest.param(nn.Conv2d, 3, [1, 2, 2, 2], (48, 80), id="2d-iso-48x80"),
    pytest.param(nn.Conv2d, [[3, 3]] * 4, [[1, 1], [2, 2], [1, 2], [2, 2]], (20, 56), id="2d-aniso-20x56"),
    pytest.param(nn.Conv3d, 3, [1, 2, 2], (20, 12, 28), id="3d-iso-20x12x28"),
    pytest.param(nn.Conv3d, ANISO_KERNELS_3D, ANISO_STRIDES_3D, (20, 40, 56), id="3d-aniso-20x40x56"),
]


def _as_lists(value, n_stages: int, dims: int) -> list[list[int]]:
    values = [value] * n_stages if isinstance(value, int) else value
    return [[v] * dims if isinstance(v, int) else list(v) for v in values]


def _tiny_net(conv_op, kernel_sizes, strides, deep_supervision: bool, num_classes: int = 3, **kwargs) -> DeconverUNet:
    n_stages = len(strides)
    return DeconverUNet(
        input_channels=2,
        n_stages=n_stages,
        features_per_stage=[4 * 2**i for i in range(n_stages)],
        conv_op=conv_op,
        kernel_sizes=kernel_sizes,
        strides=strides,
        num_classes=num_classes,
        deep_supervision=deep_supervision,
        **kwargs,
    )


def _expected_sizes(strides, patch) -> list[tuple[int, ...]]:
    """Input size divided by the cumulative stride of each decoder level 0 .. n_stages - 2."""
    per_stage = _as_lists(strides, len(strides), len(patch))
    sizes, cumulative = [], [1] * len(patch)
    for stride in per_stage[:-1]:
        cumulative = [c * s for c, s in zip(cumulative, stride)]
        sizes.append(tuple(n // c for n, c in zip(patch, cumulative)))
    return sizes


@pytest.mark.parametrize("conv_op,kernel_sizes,strides,patch", TOPOLOGIES)
def test_output_shapes_with_and_without_deep_supervision(conv_op, kernel_sizes, strides, patch) -> None:
    """DS on: list of n_stages-1 logit maps, highest resolution first; DS off: one full-size map."""
    torch.manual_seed(0)
    x = torch.randn(1, 2, *patch)
    net = _tiny_net(conv_op, kernel_sizes, strides, deep_supervision=True).eval()
    with torch.no_grad():
        outputs = net(x)
    expected = _expected_sizes(strides, patch)
    assert isinstance(outputs, (list, tuple)) and len(outputs) == len(strides) - 1
    assert [tuple(o.shape) for o in outputs] == [(1, 3, *size) for size in expected]
    assert expected[0] == patch

    net_single = _tiny_net(conv_op, kernel_sizes, strides, deep_supervision=False).eval()
    net_single.load_state_dict(net.state_dict())
    with torch.no_grad():
        single = net_single(x)
    assert isinstance(single, torch.Tensor)
    assert single.shape == (1, 3, *patch)
    # Same weights: the single output is the highest-resolution deep-supervision output.
    torch.testing.assert_close(single, outputs[0])


def test_the_anisotropic_topology_really_has_odd_bottleneck_sizes() -> None:
    """Guard for the shape test above: the 3-D case exercises odd sizes along downsampled axes."""
    strides = ANISO_STRIDES_3D
    divisor = [math.prod(axis) for axis in zip(*strides)]
    bottleneck = [n // d for n, d in zip((20, 40, 56), divisor)]
    assert bottleneck == [10, 5, 7]


def test_toggling_decoder_deep_supervision_at_runtime() -> None:
    """nnU-Net sets ``net.decoder.deep_supervision`` after construction; the output type follows it."""
    torch.manual_seed(1)
    net = _tiny_net(nn.Conv2d, 3, [1, 2, 2], deep_supervision=True).eval()
    x = torch.randn(2, 2, 16, 20)
    with torch.no_grad():
        ds = net(x)
        net.decoder.deep_supervision = False
        single = net(x)
        net.decoder.deep_supervision = True
        ds_again = net(x)
    assert isinstance(ds, list) and len(ds) == 2
    assert isinstance(single, torch.Tensor) and single.shape == (2, 3, 16, 20)
    torch.testing.assert_close(single, ds[0])
    assert isinstance(ds_again, list) and len(ds_again) == 2


def test_state_dict_with_deep_supervision_loads_strictly_without_it() -> None:
    """Checkpoints trained with DS load (strict) into an inference net built with DS off."""
    torch.manual_seed(2)
    trained = _tiny_net(nn.Conv3d, ANISO_KERNELS_3D, ANISO_STRIDES_3D, deep_supervision=True)
    inference = _tiny_net(nn.Conv3d, ANISO_KERNELS_3D, ANISO_STRIDES_3D, deep_supervision=False)
    result = inference.load_state_dict(trained.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for name, tensor in inference.state_dict().items():
        assert torch.equal(tensor, trained.state_dict()[name]), name


@pytest.mark.parametrize(
    "conv_op,strides,size,multiple",
    [
        (nn.Conv2d, [1, 2, 2, 2], (40, 52), "(8, 8)"),
        (nn.Conv3d, ANISO_STRIDES_3D, (20, 40, 60), "(2, 8, 8)"),
        (nn.Conv3d, ANISO_STRIDES_3D, (21, 40, 56), "(2, 8, 8)"),
    ],
)
def test_input_not_a_multiple_of_the_strides_raises(conv_op, strides, size, multiple) -> None:
    """An input size that is no multiple of the strides' product fails with a ValueError naming it."""
    kernels = ANISO_KERNELS_3D if conv_op is nn.Conv3d else 3
    net = _tiny_net(conv_op, kernels, strides, deep_supervision=False)
    with pytest.raises(ValueError, match=r"multiple of " + multiple.replace("(", r"\(").replace(")", r"\)")):
        net(torch.randn(1, 2, *size))


def _ndc_layers(module: nn.Module) -> list[NonnegativeDeconvolution]:
    return [m for m in module.modules() if isinstance(m, NonnegativeDeconvolution)]


def test_ndc_kernel_follows_the_plans_anisotropy() -> None:
    """A scalar ndc_kernel_size applies only on axes the plans convolve: (1,3,3) plans -> (1,5,5) NDC."""
    net = _tiny_net(nn.Conv3d, ANISO_KERNELS_3D, ANISO_STRIDES_3D, deep_supervision=True, ndc_kernel_size=5)
    first = _ndc_layers(net.encoder.stages[0])
    assert first and all(layer.kernel_size == (1, 5, 5) for layer in first)
    assert all(tuple(layer.weight.shape[2:]) == (1, 5, 5) for layer in first)
    for level in range(1, 4):
        deeper = _ndc_layers(net.encoder.stages[level])
        assert deeper and all(layer.kernel_size == (5, 5, 5) for layer in deeper)
    # The decoder stage at full resolution (last decoder stage) also uses the plans' (1, 3, 3) level.
    decoder_full_res = _ndc_layers(net.decoder.stages[-1])
    assert decoder_full_res and all(layer.kernel_size == (1, 5, 5) for layer in decoder_full_res)
    assert all(layer.kernel_size == (5, 5, 5) for stage in list(net.decoder.stages)[:-1] for layer in _ndc_layers(stage))


def test_a_few_adam_steps_reduce_the_loss_2d() -> None:
    """End to end trainability: 15 Adam steps on a fixed batch cut cross-entropy below 70%."""
    torch.manual_seed(3)
    net = _tiny_net(nn.Conv2d, 3, [1, 2, 2], deep_supervision=False, num_classes=2)
    assert_a_few_adam_steps_reduce_the_loss(net)


@pytest.mark.parametrize(
    "conv_op,kernel_sizes,strides,patch",
    [
        pytest.param(nn.Conv2d, 3, [1, 2, 2], (16, 20), id="2d"),
        pytest.param(nn.Conv3d, ANISO_KERNELS_3D, ANISO_STRIDES_3D, (4, 16, 16), id="3d-aniso"),
    ],
)
def test_every_parameter_gets_a_finite_gradient_with_deep_supervision(conv_op, kernel_sizes, strides, patch) -> None:
    """DDP without find_unused_parameters: a DS backward pass reaches every parameter, finitely."""
    torch.manual_seed(4)
    net = _tiny_net(conv_op, kernel_sizes, strides, deep_supervision=True)
    assert_deep_supervision_backward_reaches_every_parameter(net, patch)
    # Not vacuous: the NDC filters do learn (some gradient is non-zero).
    assert any(layer.weight.grad.abs().sum() > 0 for layer in _ndc_layers(net))


def _isles_net(**kwargs) -> DeconverUNet:
    """The paper's ISLES'22 topology (C0 = 64, L = 4, 2 inputs, 2 classes) on the meta device."""
    with torch.device("meta"):
        return DeconverUNet(2, 4, [64, 128, 256, 512], nn.Conv3d, 3, [1, 2, 2, 2], 2, deep_supervision=True, **kwargs)


REFERENCE_BIASES = {"mixer_input_bias": False, "stem_bias": False, "fusion_bias": False}


def test_the_defaults_keep_the_network_trained_so_far() -> None:
    """Model folders trained with nnUNetTrainerDeconver must keep loading strictly: by default every
    convolution has its bias, and the ISLES'22 network has the 10,479,302 parameters it always had."""
    net = _isles_net()
    assert net.parameter_count() == 10_479_302
    names = net.state_dict().keys()
    assert {"encoder.stem.bias", "decoder.fusions.0.bias", "encoder.stages.0.0.mixer.1.project_in.bias"} <= names


def test_the_reference_bias_options_drop_exactly_those_biases() -> None:
    """mixer_input_bias / stem_bias / fusion_bias remove those biases and nothing else (same names, shapes)."""
    default, reference = _isles_net().state_dict(), _isles_net(**REFERENCE_BIASES).state_dict()
    dropped = {name for name in default if name not in reference}
    assert all(name == "encoder.stem.bias" or name.startswith("decoder.fusions.") or name.endswith("project_in.bias")
               for name in dropped)
    assert len(dropped) == 1 + 3 + 7  # stem, 3 fusions, 7 mixers (4 encoder + 3 decoder stages)
    assert all(reference[name].shape == tensor.shape for name, tensor in default.items() if name in reference)
    mixers = 64 + 128 + 256 + 512 + 256 + 128 + 64
    assert sum(default[name].numel() for name in dropped) == 64 + (256 + 128 + 64) + mixers


def test_parameter_count_can_leave_out_the_deep_supervision_heads() -> None:
    net = _isles_net()
    low_resolution_heads = sum(p.numel() for head in list(net.decoder.heads)[:-1] for p in head.parameters())
    assert net.parameter_count(heads=1) == net.parameter_count() - low_resolution_heads == 10_479_302 - 514 - 258
    assert net.parameter_count(heads=3) == net.parameter_count(heads=9) == net.parameter_count()


# --------------------------------------------------------------------------------------------------
# Bad hyper-parameters: one line naming the key, the value and a valid example, before anything is built
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"ndc_kernel_size": 4}, "ndc_kernel_size=4"),
        ({"ndc_kernel_size": 0}, "ndc_kernel_size=0"),
        ({"ndc_kernel_size": [3, 3]}, "ndc_kernel_size=[3, 3]"),
        ({"ndc_kernel_size": "3"}, "ndc_kernel_size='3'"),
        ({"ratio": -2}, "ratio=-2"),
        ({"ratio": 2.5}, "ratio=2.5"),
        ({"ratio": True}, "ratio=True"),
        ({"groups": 3}, "groups=3"),
        ({"groups": 0}, "groups=0"),
        ({"iterations": 0}, "iterations=0"),
        ({"mlp_ratio": 0}, "mlp_ratio=0"),
        ({"blocks_per_stage": -1}, "blocks_per_stage=-1"),
        ({"blocks_per_stage": [1, 1]}, "blocks_per_stage=[1, 1]"),
        ({"blocks_per_decoder_stage": [1, -1, 1]}, "blocks_per_decoder_stage=[1, -1, 1]"),
        ({"use_mixer": False, "use_mlp": False}, "use_mixer=False"),
        ({"use_mlp": "no"}, "use_mlp='no'"),
        ({"norm_affine": 1}, "norm_affine=1"),
        ({"mixer_input_bias": None}, "mixer_input_bias=None"),
        ({"stem_bias": "false"}, "stem_bias='false'"),
        ({"fusion_bias": 0}, "fusion_bias=0"),
        ({"features_per_stage": [64, 0, 256, 512]}, "features_per_stage=[64, 0, 256, 512]"),
        ({"features_per_stage": [64, 128]}, "features_per_stage=[64, 128]"),
        ({"n_stages": 1, "features_per_stage": 64, "strides": 1, "blocks_per_stage": 1}, "n_stages=1"),
    ],
)
def test_bad_hyperparameters_are_refused_in_one_line(kwargs: dict, named: str) -> None:
    """Raised by the constructor on the meta device (where a registry checks plans before writing them)."""
    arguments = {"input_channels": 2, "n_stages": 4, "features_per_stage": [64, 128, 256, 512], "conv_op": nn.Conv3d,
                 "kernel_sizes": 3, "strides": [1, 2, 2, 2], "num_classes": 2, **kwargs}
    with torch.device("meta"), pytest.raises(ValueError) as error:
        DeconverUNet(**arguments)
    message = str(error.value)
    assert message.startswith(f"{named} is invalid: ") and ", e.g. " in message and "\n" not in message, message


def test_the_error_message_of_an_even_kernel() -> None:
    with pytest.raises(ValueError) as error:
        _isles_net(ndc_kernel_size=4)
    assert str(error.value) == (
        "ndc_kernel_size=4 is invalid: NDC kernels must be odd (one integer, or 3 of them, one per axis), "
        "e.g. 3, 5 or [1, 3, 3]."
    )


def test_valid_unusual_hyperparameters_are_accepted() -> None:
    """Per-axis kernels, G dividing every width, no blocks at a stage: all legitimate."""
    net = _isles_net(ndc_kernel_size=[1, 3, 5], groups=64, blocks_per_stage=[1, 0, 2, 1])
    assert {layer.kernel_size for layer in _ndc_layers(net)} == {(1, 3, 5)}
    assert len(_ndc_layers(net.encoder.stages[1])) == 0
