"""The deformable transposed convolution layer (papers/dtc.md section 3, eq. 1-2, Table 4 ablations).

Throughout, "interpolation of the 1x1 path" is ``F.interpolate(dtc.features(x), scale_factor=stride,
mode="(bi|tri)linear", align_corners=False)``: where DTC samples when every displacement is zero.
Exactness tests run in float64 so that any mismatch beyond 1e-10 is a real coordinate error.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from nnunet_deconver.architectures.dtc_settings import check_dtc_settings, dtc_upsampler_factory
from nnunet_deconver.layers.dtc import CoordinateBranch, DeformableTransposedConv, base_grid

SATURATED = 30.0  # tanh(30) == 1.0 and sigmoid(30) == 1.0 exactly in float64 (1 - 1e-26 rounds to 1)

# (input spatial size, stride): isotropic, anisotropic (nnU-Net's (1, 2, 2)), odd sizes, stride 3.
CASES = [
    pytest.param((5, 7), (2, 2), id="2d-iso-odd"),
    pytest.param((4, 5), (1, 2), id="2d-aniso"),
    pytest.param((3, 4), (3, 2), id="2d-stride3"),
    pytest.param((4, 5, 3), (2, 2, 2), id="3d-iso-odd"),
    pytest.param((3, 5, 7), (1, 2, 2), id="3d-aniso-122"),
    pytest.param((5, 4, 6), (2, 1, 2), id="3d-aniso-212"),
]


def interpolation_of_pointwise_path(dtc: DeformableTransposedConv, x: Tensor) -> Tensor:
    mode = "bilinear" if x.dim() == 4 else "trilinear"
    return F.interpolate(dtc.features(x), scale_factor=dtc.stride, mode=mode, align_corners=False)


def deformable_part(dtc: DeformableTransposedConv, x: Tensor) -> Tensor:
    """Path (b) alone: the output minus the ordinary upsampling."""
    return dtc(x) - dtc._upsample_base(x)


def make_dtc(size: tuple[int, ...], stride: tuple[int, ...], in_channels: int = 3, out_channels: int = 2,
             **settings) -> tuple[DeformableTransposedConv, Tensor]:
    dtc = DeformableTransposedConv(in_channels, out_channels, stride, **settings).double()
    x = torch.randn(2, in_channels, *size, dtype=torch.float64)
    return dtc, x


def randomise_coordinates(dtc: DeformableTransposedConv, scale: float = 1.0) -> None:
    with torch.no_grad():
        dtc.coordinates.weight.normal_(0, scale)
        dtc.coordinates.bias.normal_(0, scale)


def set_coordinate_bias(dtc: DeformableTransposedConv, offsets: list[float], weights: list[float]) -> None:
    """Constant raw coordinate-branch output: zero weight, bias = (offset per axis, weight per axis)."""
    with torch.no_grad():
        dtc.coordinates.weight.zero_()
        dtc.coordinates.bias.copy_(torch.tensor([*offsets, *weights], dtype=dtc.coordinates.bias.dtype))


def shifted(reference: Tensor, axis: int, output_voxels: int) -> Tensor:
    """``reference`` read ``output_voxels`` further along spatial ``axis``, repeating the edge (border padding)."""
    n = reference.shape[2 + axis]
    index = (torch.arange(n) + output_voxels).clamp(0, n - 1)
    return reference.index_select(2 + axis, index)


# --------------------------------------------------------------------------------------------------
# Where DTC samples without displacement: exactly linear interpolation (align_corners=False)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "stride"), CASES)
def test_lambda_zero_equals_interpolation_of_the_pointwise_path(size, stride) -> None:
    """lambda = 0 cancels any coordinate-branch output: path (b) is plain linear interpolation."""
    torch.manual_seed(0)
    dtc, x = make_dtc(size, stride, receptive_field=0.0)
    randomise_coordinates(dtc, 3.0)
    assert dtc.displacement(x).abs().max() == 0
    torch.testing.assert_close(deformable_part(dtc, x), interpolation_of_pointwise_path(dtc, x), atol=1e-12, rtol=0)
    # and the whole output is path (a) (nnU-Net's transposed convolution) + path (b)
    expected = dtc.upsampling(x) + interpolation_of_pointwise_path(dtc, x)
    torch.testing.assert_close(dtc(x), expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("receptive_field", [1.0, 2.5, 10.0, None, (0.5, 3.0)], ids=str)
@pytest.mark.parametrize(("size", "stride"), [CASES[0], CASES[1], CASES[4]])
def test_zero_coordinate_branch_equals_interpolation_for_any_lambda(size, stride, receptive_field) -> None:
    if isinstance(receptive_field, tuple):
        receptive_field = (receptive_field * 2)[: len(stride)]
    torch.manual_seed(1)
    dtc, x = make_dtc(size, stride, receptive_field=receptive_field)
    assert dtc.coordinates.weight.abs().max() == 0 and dtc.coordinates.bias.abs().max() == 0  # initialisation
    torch.testing.assert_close(deformable_part(dtc, x), interpolation_of_pointwise_path(dtc, x), atol=1e-12, rtol=0)


@pytest.mark.parametrize(("size", "stride"), CASES)
def test_base_grid_is_where_linear_interpolation_samples(size, stride) -> None:
    """P_grid in input voxel coordinates is (j + 0.5) / s - 0.5 per axis, in grid_sample's (x, y[, z]) order."""
    output_size = [n * s for n, s in zip(size, stride)]
    grid = base_grid(output_size, torch.zeros((), dtype=torch.float64))
    assert grid.shape == (*output_size, len(size)) and grid.dtype == torch.float64
    for axis, (n, s) in enumerate(zip(size, stride)):
        channel = len(size) - 1 - axis  # grid order is last axis first
        voxels = ((grid[..., channel] + 1) * n - 1) / 2  # align_corners=False unnormalisation
        j = torch.arange(n * s, dtype=torch.float64)
        expected = ((j + 0.5) / s - 0.5).reshape([-1 if a == axis else 1 for a in range(len(size))])
        torch.testing.assert_close(voxels, expected.expand_as(voxels), atol=1e-12, rtol=0)


# --------------------------------------------------------------------------------------------------
# Known displacements move the sampling exactly (no half-voxel or axis-order errors)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("direction", [1, -1], ids=["forward", "backward"])
@pytest.mark.parametrize(("size", "stride"), CASES)
def test_one_input_voxel_displacement_shifts_the_sampling_by_exactly_one_voxel_per_axis(size, stride, direction) -> None:
    """lambda = 2, tanh(offset) = +-1, sigmoid(weight) = 1/2: every output voxel samples exactly one
    input voxel further along one axis; the result is the interpolated 1x1 features read s output
    voxels further along that axis (and only that axis), border values beyond the edge."""
    torch.manual_seed(2)
    d = len(size)
    for axis in range(d):
        dtc, x = make_dtc(size, stride, receptive_field=2.0)
        offsets = [0.0] * d
        offsets[axis] = direction * SATURATED
        set_coordinate_bias(dtc, offsets, [0.0] * d)

        displacement_voxels = dtc.displacement(x) * torch.tensor(size[::-1], dtype=torch.float64) / 2
        expected_displacement = torch.zeros(d, dtype=torch.float64)
        expected_displacement[d - 1 - axis] = direction  # grid order
        torch.testing.assert_close(displacement_voxels, expected_displacement.expand_as(displacement_voxels))

        reference = interpolation_of_pointwise_path(dtc, x)
        expected = shifted(reference, axis, direction * stride[axis])
        torch.testing.assert_close(deformable_part(dtc, x), expected, atol=1e-10, rtol=0)
        # not vacuous: the shift changes the result (the interior differs from the unshifted interpolation)
        assert (expected - reference).abs().max() > 1e-3


@pytest.mark.parametrize(("size", "stride"), [CASES[1], CASES[4]])
def test_half_voxel_displacement_interpolates_between_neighbours(size, stride) -> None:
    """lambda = 1, offset * weight = 1/2: along a stride-1 axis the output is the mean of two neighbouring
    (interpolated) input voxels -- linear, not nearest, sampling."""
    torch.manual_seed(3)
    d = len(size)
    axis = stride.index(1)
    dtc, x = make_dtc(size, stride, receptive_field=1.0)
    offsets = [0.0] * d
    offsets[axis] = SATURATED
    set_coordinate_bias(dtc, offsets, [0.0] * d)
    reference = interpolation_of_pointwise_path(dtc, x)
    expected = 0.5 * (reference + shifted(reference, axis, 1))
    torch.testing.assert_close(deformable_part(dtc, x), expected, atol=1e-10, rtol=0)


def test_per_axis_receptive_field_follows_axis_order() -> None:
    """receptive_field=(0, 0, 2) with every offset saturated moves the sampling along the last axis (W) only."""
    torch.manual_seed(4)
    size, stride = (4, 5, 6), (1, 2, 2)
    dtc, x = make_dtc(size, stride, receptive_field=(0.0, 0.0, 2.0))
    set_coordinate_bias(dtc, [SATURATED] * 3, [0.0] * 3)
    expected = shifted(interpolation_of_pointwise_path(dtc, x), 2, stride[2])
    torch.testing.assert_close(deformable_part(dtc, x), expected, atol=1e-10, rtol=0)


def test_receptive_field_is_counted_in_voxels_of_each_axis_for_anisotropic_inputs() -> None:
    """The same lambda = 1 voxel is 2 / n normalised units on an axis of n voxels."""
    size = (3, 8, 5)
    dtc, x = make_dtc(size, (1, 2, 2), receptive_field=1.0)
    set_coordinate_bias(dtc, [SATURATED] * 3, [SATURATED] * 3)
    displacement = dtc.displacement(x)
    expected = torch.tensor([2 / 5, 2 / 8, 2 / 3], dtype=torch.float64)  # grid order: W, H, D
    torch.testing.assert_close(displacement, expected.expand_as(displacement))


def test_unlimited_receptive_field_reaches_the_whole_feature_map() -> None:
    """lambda = None: offset * weight = 1 moves by 2 normalised units, from anywhere to beyond the far edge,
    so every output voxel samples the border value along that axis."""
    torch.manual_seed(5)
    size, stride = (5, 7), (2, 2)
    dtc, x = make_dtc(size, stride, receptive_field=None)
    set_coordinate_bias(dtc, [0.0, SATURATED], [0.0, SATURATED])
    reference = interpolation_of_pointwise_path(dtc, x)
    expected = reference[..., -1:].expand_as(reference)
    torch.testing.assert_close(deformable_part(dtc, x), expected, atol=1e-10, rtol=0)


def test_displacement_is_bounded_by_lambda_with_the_default_activations() -> None:
    torch.manual_seed(6)
    size = (4, 6, 5)
    dtc, x = make_dtc(size, (2, 2, 2), receptive_field=1.5)
    randomise_coordinates(dtc, 5.0)
    voxels = dtc.displacement(x) * torch.tensor(size[::-1], dtype=torch.float64) / 2
    assert voxels.abs().max() <= 1.5 and voxels.abs().max() > 0.5


# --------------------------------------------------------------------------------------------------
# Shapes, paths, settings
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("base_upsampling", ["transposed", "linear"])
@pytest.mark.parametrize(("size", "stride"), CASES)
def test_output_shape_for_isotropic_and_anisotropic_strides(size, stride, base_upsampling) -> None:
    torch.manual_seed(7)
    dtc = DeformableTransposedConv(3, 5, stride, base_upsampling=base_upsampling)
    randomise_coordinates(dtc)
    out = dtc(torch.randn(2, 3, *size))
    assert out.shape == (2, 5, *[n * s for n, s in zip(size, stride)]) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert dtc.coordinates.weight.shape == (3, 2 * len(size), *stride)  # one offset + one weight per axis
    expected_type = nn.ConvTranspose2d if len(size) == 2 else nn.ConvTranspose3d
    if base_upsampling == "linear":
        expected_type = nn.Conv2d if len(size) == 2 else nn.Conv3d
    assert type(dtc.upsampling) is expected_type


def test_an_integer_stride_means_3d() -> None:
    out = DeformableTransposedConv(2, 2, 2)(torch.randn(1, 2, 2, 3, 4))
    assert out.shape == (1, 2, 4, 6, 8)


@pytest.mark.parametrize(("size", "stride"), [CASES[0], CASES[4]])
def test_linear_base_upsampling_is_interpolation_of_its_own_pointwise_conv(size, stride) -> None:
    torch.manual_seed(8)
    dtc, x = make_dtc(size, stride, base_upsampling="linear", receptive_field=0.0)
    mode = "bilinear" if len(size) == 2 else "trilinear"
    path_a = F.interpolate(dtc.upsampling(x), scale_factor=stride, mode=mode, align_corners=False)
    torch.testing.assert_close(dtc(x), path_a + interpolation_of_pointwise_path(dtc, x), atol=1e-12, rtol=0)
    assert dtc.upsampling is not dtc.features


def test_an_existing_upsampling_module_is_kept_as_path_a() -> None:
    transposed = nn.ConvTranspose3d(4, 2, kernel_size=(1, 2, 2), stride=(1, 2, 2))
    dtc = DeformableTransposedConv(4, 2, (1, 2, 2), upsampling=transposed)
    assert dtc.upsampling is transposed
    x = torch.randn(1, 4, 2, 3, 3)
    torch.testing.assert_close(dtc(x) - transposed(x), interpolation_of_pointwise_path(dtc, x))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"base_upsampling": "nearest"}, "base_upsampling"),
        ({"weight_activation": "relu"}, "weight_activation"),
        ({"offset_activation": "sigmoid"}, "offset_activation"),
    ],
)
def test_invalid_setting_values_get_one_line_errors(settings, message) -> None:
    with pytest.raises(ValueError, match=message) as error:
        DeformableTransposedConv(2, 2, (2, 2), **settings)
    assert "\n" not in str(error.value)


def test_a_stride_with_one_axis_is_refused() -> None:
    with pytest.raises(ValueError, match="2-D and 3-D"):
        DeformableTransposedConv(2, 2, (2,))


def test_unknown_dtc_settings_give_one_line_errors() -> None:
    for call in (lambda: check_dtc_settings({"lambda": 1.0, "receptive_field": 2}),
                 lambda: dtc_upsampler_factory({"lambda": 1.0})):
        with pytest.raises(ValueError, match=r"Unknown DTC setting\(s\) \['lambda'\]") as error:
            call()
        assert "\n" not in str(error.value) and "receptive_field" in str(error.value)  # names the valid ones
    assert check_dtc_settings({"receptive_field": None, "use_weights": False}) == {
        "receptive_field": None, "use_weights": False}
    factory = dtc_upsampler_factory({"receptive_field": 3.0, "base_upsampling": "linear"})
    built = factory(8, 4, (1, 2, 2))
    assert isinstance(built, DeformableTransposedConv)
    assert built.receptive_field == 3.0 and built.base_upsampling == "linear" and built.stride == (1, 2, 2)


# --------------------------------------------------------------------------------------------------
# Ablation switches (Table 4)
# --------------------------------------------------------------------------------------------------


def test_offsets_only_ignores_the_weight_channels() -> None:
    """use_weights=False: displacement = lambda * tanh(offset), whatever the weight channels say."""
    size = (4, 5)
    dtc, x = make_dtc(size, (2, 2), receptive_field=1.0, use_weights=False)
    for weight in (-SATURATED, 0.0, 3.0):
        set_coordinate_bias(dtc, [SATURATED, 0.0], [weight, weight])
        voxels = dtc.displacement(x) * torch.tensor(size[::-1], dtype=torch.float64) / 2
        torch.testing.assert_close(voxels, torch.tensor([0.0, 1.0], dtype=torch.float64).expand_as(voxels))
    with_weights, _ = make_dtc(size, (2, 2), receptive_field=1.0)
    set_coordinate_bias(with_weights, [SATURATED, 0.0], [0.0, 0.0])
    assert with_weights.displacement(x)[..., 1].max().item() == pytest.approx(0.5 * 2 / 4)  # sigmoid(0) halves it


def test_without_tanh_offsets_are_unbounded() -> None:
    size = (4, 5)
    dtc, x = make_dtc(size, (2, 2), receptive_field=1.0, offset_activation=None)
    set_coordinate_bias(dtc, [5.0, -3.0], [SATURATED, SATURATED])
    voxels = dtc.displacement(x) * torch.tensor(size[::-1], dtype=torch.float64) / 2
    torch.testing.assert_close(voxels, torch.tensor([-3.0, 5.0], dtype=torch.float64).expand_as(voxels))
    bounded, _ = make_dtc(size, (2, 2), receptive_field=1.0)
    set_coordinate_bias(bounded, [5.0, -3.0], [SATURATED, SATURATED])
    bounded_voxels = bounded.displacement(x) * torch.tensor(size[::-1], dtype=torch.float64) / 2
    expected = torch.tanh(torch.tensor([-3.0, 5.0], dtype=torch.float64))  # grid order, each within 1 voxel
    torch.testing.assert_close(bounded_voxels, expected.expand_as(bounded_voxels))


def test_without_sigmoid_the_raw_weights_scale_the_offsets() -> None:
    size = (4, 5)
    dtc, x = make_dtc(size, (2, 2), receptive_field=1.0, weight_activation=None)
    set_coordinate_bias(dtc, [SATURATED, SATURATED], [-0.5, 2.0])
    voxels = dtc.displacement(x) * torch.tensor(size[::-1], dtype=torch.float64) / 2
    torch.testing.assert_close(voxels, torch.tensor([2.0, -0.5], dtype=torch.float64).expand_as(voxels))


# --------------------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "stride", "receptive_field"),
                         [((3, 4), (2, 2), 1.5), ((2, 3, 3), (1, 2, 2), 1.5), ((3, 3), (2, 1), None)],
                         ids=["2d", "3d-aniso", "2d-unlimited"])
def test_gradcheck_through_offsets_weights_and_input(size, stride, receptive_field) -> None:
    """Finite differences (float64) agree with autograd w.r.t. the input and the coordinate branch."""
    torch.manual_seed(9)
    dtc, _ = make_dtc(size, stride, in_channels=2, out_channels=2, receptive_field=receptive_field)
    randomise_coordinates(dtc, 0.7)
    x = torch.randn(1, 2, *size, dtype=torch.float64, requires_grad=True)
    weight = dtc.coordinates.weight.detach().clone().requires_grad_(True)
    bias = dtc.coordinates.bias.detach().clone().requires_grad_(True)

    def function(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        return torch.func.functional_call(dtc, {"coordinates.weight": weight, "coordinates.bias": bias}, (x,))

    assert torch.autograd.gradcheck(function, (x, weight, bias), eps=1e-6, atol=1e-5)

    # both halves of the coordinate branch (offsets and weights) get a learning signal
    d = len(size)
    (dtc(x) * torch.randn_like(dtc(x))).sum().backward()
    grad = dtc.coordinates.weight.grad
    assert grad[:, :d].abs().sum() > 0, "no gradient reaches the offsets"
    assert grad[:, d:].abs().sum() > 0, "no gradient reaches the weights"
    assert (dtc.coordinates.bias.grad.abs() > 0).all()
    assert dtc.features.weight.grad.abs().sum() > 0 and x.grad.abs().sum() > 0


def test_the_zero_initialised_branch_still_learns() -> None:
    """At initialisation (offsets 0, weights 1/2) the offsets get a gradient (d tanh = 1); the weights
    do not yet (they multiply a zero offset) -- a training step moves the offsets first."""
    torch.manual_seed(10)
    dtc = DeformableTransposedConv(2, 2, (2, 2))
    x = torch.randn(1, 2, 4, 5)
    (dtc(x) * torch.randn(1, 2, 8, 10)).sum().backward()
    assert dtc.coordinates.weight.grad[:, :2].abs().sum() > 0
    assert dtc.coordinates.bias.grad[:2].abs().sum() > 0


def test_coordinate_branch_is_not_a_convolution_module() -> None:
    """nnU-Net's InitWeights_He re-initialises every nn.Conv*/ConvTranspose*: the branch must not be one."""
    from dynamic_network_architectures.initialization.weight_init import InitWeights_He

    dtc = DeformableTransposedConv(4, 2, (2, 2, 2))
    dtc.apply(InitWeights_He(1e-2))
    assert isinstance(dtc.coordinates, CoordinateBranch)
    assert not isinstance(dtc.coordinates, nn.modules.conv._ConvNd)
    assert dtc.coordinates.weight.abs().max() == 0 and dtc.coordinates.bias.abs().max() == 0


# --------------------------------------------------------------------------------------------------
# Mixed precision
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize(("size", "stride"), [CASES[0], CASES[4]])
def test_cpu_autocast_computes_coordinates_and_sampling_in_fp32(size, stride, dtype, monkeypatch) -> None:
    torch.manual_seed(11)
    dtc = DeformableTransposedConv(8, 4, stride, receptive_field=2.0)
    randomise_coordinates(dtc, 0.5)
    x = torch.randn(2, 8, *size)
    reference = dtc(x)

    seen: list[tuple[torch.dtype, torch.dtype]] = []
    original = F.grid_sample

    def recording_grid_sample(input: Tensor, grid: Tensor, *args, **kwargs) -> Tensor:
        seen.append((input.dtype, grid.dtype))
        result = original(input, grid, *args, **kwargs)
        seen.append((result.dtype, result.dtype))
        return result

    monkeypatch.setattr(F, "grid_sample", recording_grid_sample)
    branch_outputs: list[torch.dtype] = []
    dtc.coordinates.register_forward_hook(lambda _m, _i, out: branch_outputs.append(out.dtype))
    with torch.autocast("cpu", dtype=dtype):
        displacement = dtc.displacement(x)
        out = dtc(x)
        path_a = dtc.upsampling(x)
    assert path_a.dtype == dtype  # autocast really is active for the convolutions
    assert displacement.dtype == torch.float32 and branch_outputs == [torch.float32, torch.float32]
    assert seen == [(torch.float32, torch.float32), (torch.float32, torch.float32)]
    assert torch.isfinite(out).all()
    error = (out.float() - reference).norm() / reference.norm()
    assert error < 16 * {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}[dtype]


class _HostTensorRecorder(TorchDispatchMode):
    """Records every aten op that reads or makes a tensor on the CPU."""

    def __init__(self) -> None:
        super().__init__()
        self.host_ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tensors = [t for t in (*args, *(kwargs or {}).values(), out) if isinstance(t, Tensor)]
        if any(t.device.type == "cpu" for t in tensors):
            self.host_ops.append(str(func))
        return out


@pytest.mark.parametrize("receptive_field", [1.0, [1.0, 2.0, 3.0], None])
def test_forward_and_backward_build_no_host_tensor(receptive_field, monkeypatch) -> None:
    """On an accelerator a host tensor in the forward means a copy and a sync per step: on 'meta' (standing
    in for CUDA) no op of a DTC forward and backward touches the CPU, and no tensor is made from Python data."""
    with torch.device("meta"):
        dtc = DeformableTransposedConv(4, 2, (1, 2, 2), receptive_field=receptive_field)
        x = torch.empty(2, 4, 3, 4, 5, requires_grad=True)

    def refuse(*args, **kwargs):
        raise AssertionError("a tensor was built from host data in the forward pass")

    for constructor in ("tensor", "as_tensor", "from_numpy"):
        monkeypatch.setattr(torch, constructor, refuse)
    with _HostTensorRecorder() as recorder:
        dtc(x).sum().backward()
    assert recorder.host_ops == []
