"""SUMNet (papers/segmentation-cnns-are-denoising-models.md, Fig. 1, with the facts sheet's topology)."""

from __future__ import annotations

import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from torch import nn

from nnunet_deconver.analysis.training_step_cost import saved_activation_bytes
from nnunet_deconver.architectures.sum_network import PaddedConv, PaperOutputLayer, SUMNet
from nnunet_deconver.layers.shrinkage import AUTHORS_LEAKS, SoftShrinkage, shrinkage_scale

PAPER_PARAMETERS = 343_474  # the authors' count: 342,864 conv weights + 609 thresholds + 1 output weight


def paper_sum(**options) -> SUMNet:
    settings = {"output_layer": "paper", "output_bias": False, "deep_supervision_heads": False,
                "shrinkage_leaks": AUTHORS_LEAKS, **options}
    return SUMNet(1, 5, [8, 16, 32, 64, 128], nn.Conv2d, 3, [1, 2, 2, 2, 2], 2, **settings)


def small_sum(spatial_dims: int = 2, **options) -> SUMNet:
    conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
    strides = [1, 2, 2] if spatial_dims == 2 else [[1, 1, 1], [1, 2, 2], [2, 2, 2]]
    kernels = 3 if spatial_dims == 2 else [[1, 3, 3], [3, 3, 3], [3, 3, 3]]
    return SUMNet(options.pop("input_channels", 1), 3, [4, 8, 16], conv, kernels, strides,
                  options.pop("num_classes", 3), **options)


def randomise_thresholds(network: nn.Module, scale: float = 0.3) -> None:
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, SoftShrinkage):
                module.threshold.uniform_(-scale, scale)


def test_the_paper_configuration_has_the_authors_parameter_count() -> None:
    network = paper_sum()
    assert sum(p.numel() for p in network.parameters()) == PAPER_PARAMETERS
    thresholds = sum(m.threshold.numel() for m in network.modules() if isinstance(m, SoftShrinkage))
    assert thresholds == 609


def test_no_bias_no_normalisation_and_a_shrinkage_after_every_convolution_of_the_ed() -> None:
    network = paper_sum()
    convs = [m for m in network.modules() if isinstance(m, nn.Conv2d)]
    ed_convs = [m for m in network.modules() if isinstance(m, PaddedConv)]
    assert all(c.bias is None for c in convs) and all(c.padding_mode == "replicate" for c in ed_convs)
    assert len(convs) == len(ed_convs) + 1  # + the output layer
    assert not any(isinstance(m, (nn.InstanceNorm2d, nn.BatchNorm2d, nn.GroupNorm)) for m in network.modules())
    shrinkages = [m for m in network.modules() if isinstance(m, SoftShrinkage)]
    # the decoder's conv_a and conv_b share one shrinkage (z = S(conv_a(y) + conv_b(F)))
    assert len(ed_convs) == len(shrinkages) + len(network.decoder.levels)
    assert isinstance(network.output_layer, PaperOutputLayer)


def test_the_decoder_narrows_to_the_previous_width_and_returns_to_the_input_channels() -> None:
    network = paper_sum()
    narrowing = [level.conv_narrow.conv.out_channels for level in network.decoder.levels]
    assert narrowing == [32, 16, 8, 1]
    assert network.encoder.bottleneck.conv2.conv.out_channels == 64
    x = torch.randn(2, 1, 32, 48)
    assert network.encoder_decoder(x).shape == x.shape


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_outputs_follow_nnunets_deep_supervision_contract(spatial_dims: int) -> None:
    network = small_sum(spatial_dims, input_channels=2, num_classes=3, deep_supervision=True)
    shape = (16, 32) if spatial_dims == 2 else (8, 16, 16)
    outputs = network(torch.randn(1, 2, *shape))
    expected = [shape, tuple(s // 2 for s in shape)] if spatial_dims == 2 else [shape, (8, 8, 8)]
    assert [tuple(o.shape[2:]) for o in outputs] == expected
    assert all(o.shape[:2] == (1, 3) for o in outputs)
    x = torch.randn(1, 2, *shape)
    full_resolution = network(x)[0]
    network.decoder.deep_supervision = False
    torch.testing.assert_close(network(x), full_resolution)


def test_deep_supervision_heads_read_the_ed_without_changing_it() -> None:
    with_heads = small_sum(deep_supervision=True)
    without = small_sum(deep_supervision_heads=False)
    without.load_state_dict({k: v for k, v in with_heads.state_dict().items() if "decoder.heads" not in k})
    x = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(with_heads.encoder_decoder(x), without.encoder_decoder(x))
    torch.testing.assert_close(with_heads(x)[0], without(x))
    without.decoder.deep_supervision = True
    assert len(without(x)) == 1


def test_ed_channels_classes_gives_one_map_per_class() -> None:
    network = small_sum(input_channels=2, num_classes=4, ed_channels="classes")
    assert network.encoder_decoder(torch.randn(1, 2, 16, 16)).shape == (1, 4, 16, 16)


def test_the_ed_at_alpha_zero_is_exactly_linear_and_nonlinear_at_alpha_one() -> None:
    torch.manual_seed(0)
    network = small_sum().double().eval()
    randomise_thresholds(network)
    x, y = torch.randn(2, 1, 1, 16, 16, dtype=torch.float64)
    with shrinkage_scale(network, 0.0):
        ed = network.encoder_decoder
        torch.testing.assert_close(ed(x + y), ed(x) + ed(y), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ed(-2.5 * x), -2.5 * ed(x), rtol=1e-12, atol=1e-12)
    assert (network.encoder_decoder(x + y) - network.encoder_decoder(x) - network.encoder_decoder(y)).abs().max() > 1e-3


def test_identity_kernels_and_zero_thresholds_give_the_haar_round_trip_through_the_high_band_bypass() -> None:
    """Width 1 everywhere, Dirac convolutions, conv_b = 0: the ED is IDWT(DWT(x)) = x, exactly only because
    the high bands bypass the lower levels (without them the round trip would be a low-pass)."""
    network = SUMNet(1, 4, [1, 1, 1, 1], nn.Conv2d, 3, [1, 2, 2, 2], 2).double()
    with torch.no_grad():
        for name, module in network.named_modules():
            if isinstance(module, PaddedConv):
                weight = module.conv.weight
                nn.init.zeros_(weight) if name.endswith("conv_skip") else nn.init.dirac_(weight)
    x = torch.randn(2, 1, 24, 16, dtype=torch.float64)
    torch.testing.assert_close(network.encoder_decoder(x), x, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("options", "key"), [
    ({"strides": [1, 3, 2]}, "strides"),
    ({"strides": [2, 2, 2]}, "strides"),
    ({"kernel_sizes": 4}, "kernel_sizes"),
    ({"output_layer": "paper"}, "output_layer"),
    ({"shrinkage_leaks": [0.5]}, "shrinkage_leaks"),
    ({"ed_channels": "both"}, "ed_channels"),
    ({"padding_mode": "edge"}, "padding_mode"),
])
def test_bad_hyper_parameters_are_refused_in_one_line_naming_the_key(options: dict, key: str) -> None:
    arguments = {"input_channels": 1, "n_stages": 3, "features_per_stage": [4, 8, 16], "conv_op": nn.Conv2d,
                 "kernel_sizes": 3, "strides": [1, 2, 2], "num_classes": 3, **options}
    with pytest.raises(ValueError, match=rf"^{key}=") as error:
        SUMNet(**arguments)
    assert "\n" not in str(error.value)


def test_an_input_that_the_strides_do_not_divide_is_refused() -> None:
    with pytest.raises(ValueError, match=r"multiple of \(4, 4\)"):
        small_sum()(torch.randn(1, 1, 18, 16))


def test_paper_output_layer_decides_foreground_above_one_half() -> None:
    network = paper_sum()
    logits = network.output_layer(torch.linspace(-1, 2, 31).view(1, 1, 31, 1))
    foreground = network.output_layer.out(torch.linspace(-1, 2, 31).view(1, 1, 31, 1)).clamp(0, 1)
    torch.testing.assert_close(logits[:, 1:], foreground)
    assert torch.equal(logits.argmax(1, keepdim=True) == 1, foreground > 0.5)


@pytest.mark.parametrize("autocast_dtype", [None, torch.float16])
def test_a_training_step_saves_no_more_activations_than_plainconvunet_at_the_same_plans(autocast_dtype) -> None:
    features, kernels = [32, 64, 128, 256, 320], [[3, 3, 3]] * 5
    strides3 = [[1, 1, 1]] + [[2, 2, 2]] * 4
    sum_bytes = saved_activation_bytes(
        lambda: SUMNet(1, 5, features, nn.Conv3d, kernels, strides3, 3, deep_supervision=True), (2, 1, 64, 64, 64),
        autocast_dtype)
    plain_bytes = saved_activation_bytes(
        lambda: PlainConvUNet(1, 5, features, nn.Conv3d, kernels, strides3, 2, 3, 2, conv_bias=True,
                              norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                              nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=True),
        (2, 1, 64, 64, 64), autocast_dtype)
    assert sum_bytes <= plain_bytes


def test_shrinkage_keeps_only_its_input_for_backward() -> None:
    module = SoftShrinkage(4, leaks=AUTHORS_LEAKS)
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        module(x)
    assert sum(n for n in saved if n > 4) == x.numel()


@pytest.mark.parametrize("leaks", [(0.0, 0.0), AUTHORS_LEAKS])
def test_shrinkage_gradients_pass_gradcheck_in_float64(leaks) -> None:
    module = SoftShrinkage(3, leaks=leaks).double()
    with torch.no_grad():
        module.threshold.copy_(torch.tensor([0.4, -0.3, 0.0]))
    module.alpha = 0.7
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    x = x + 0.05 * torch.sign(x)  # keep away from the kinks, where the derivative jumps

    def shrink(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(module, {"threshold": threshold}, (x,))

    assert torch.autograd.gradcheck(shrink, (x.requires_grad_(), module.threshold.detach().clone().requires_grad_()))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_under_cpu_autocast_the_output_is_close_and_every_parameter_gets_a_finite_gradient(dtype) -> None:
    torch.manual_seed(0)
    network = small_sum(input_channels=2, num_classes=3, deep_supervision=True)
    randomise_thresholds(network, 0.05)
    x = torch.randn(2, 2, 16, 16)
    reference = network(x)[0]
    with torch.autocast("cpu", dtype=dtype):
        outputs = network(x)
        loss = sum(nn.functional.cross_entropy(o.float(), torch.zeros(o.shape[0], *o.shape[2:], dtype=torch.long))
                   for o in outputs)
    assert outputs[0].dtype == dtype
    error = (outputs[0].float() - reference).norm() / reference.norm()
    assert error < 64 * torch.finfo(dtype).eps
    loss.backward()
    for name, parameter in network.named_parameters():
        assert parameter.grad is not None and parameter.grad.dtype == torch.float32, name
        assert torch.isfinite(parameter.grad).all(), name


def test_torch_compile_traces_the_sum_in_one_graph() -> None:
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(small_sum(deep_supervision=True))(torch.randn(1, 1, 16, 16))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    torch._dynamo.reset()
