"""DTC in whole networks: nnU-Net's PlainConvUNet / ResidualEncoderUNet with DTC decoders, Deconver and
Factorizer with ``dtc``, and the ``dtc-offsets`` analysis (papers/dtc.md section 4.3, Fig. 7)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch import nn

from nnunet_deconver.analysis.dtc_offsets import last_dtc, sampling_field, save_sampling_figure
from nnunet_deconver.architectures import DeconverUNet
from nnunet_deconver.architectures.dtc_upsampling import DTCPlainConvUNet, DTCResidualEncoderUNet
from nnunet_deconver.architectures.factorizer_unet import FactorizerUNet
from nnunet_deconver.layers.dtc import DeformableTransposedConv
from nnunet_deconver.nnunet.presets import load_preset
from nnunet_deconver.nnunet.trainers import nnUNetTrainerDTC
from support.networks import dtc_parameters, dtcs, n_parameters, planned_network, transposed_convs
from support.plans import DTC_PLAIN_UNET as DTC_PLAIN
from support.plans import RESENC_UNET
from support.plans import narrow_configuration as configuration_manager

SATURATED = 30.0


# --------------------------------------------------------------------------------------------------
# nnU-Net's PlainConvUNet / ResidualEncoderUNet with DTC decoders
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_trainer_built_dtc_unet_is_the_planned_network_plus_exactly_the_dtc_parameters(spatial_dims: int) -> None:
    config = configuration_manager(spatial_dims)
    original = planned_network(config)
    network = nnUNetTrainerDTC.build_network_architecture(None, config, 1, 3, enable_deep_supervision=True)
    assert type(network) is DTCPlainConvUNet and type(original) is PlainConvUNet
    assert n_parameters(network) == n_parameters(original) + dtc_parameters(transposed_convs(original))
    upsamplers = list(network.decoder.transpconvs)
    assert all(isinstance(m, DeformableTransposedConv) for m in upsamplers) and len(upsamplers) == 2
    assert [m.stride for m in upsamplers] == [s for _, _, s in transposed_convs(original)]
    # nnU-Net's transposed convs are kept as path (a); the receptive field is the trainer's (1 voxel)
    assert all(type(m.upsampling) is type(original.decoder.transpconvs[0]) for m in upsamplers)
    assert {m.receptive_field for m in upsamplers} == {1.0}
    # nnU-Net's InitWeights_He ran (the 1x1 convs are He-initialised, not PyTorch's default) but left
    # the coordinate branch at zero
    for m in upsamplers:
        assert m.coordinates.weight.abs().max() == 0 and m.coordinates.bias.abs().max() == 0
        assert m.features.bias.abs().max() == 0  # InitWeights_He zeroes conv biases
    outputs = network(torch.rand(2, 1, *config.patch_size))
    assert [tuple(o.shape) for o in outputs][0] == (2, 3, *config.patch_size) and len(outputs) == 2


def test_get_network_from_plans_with_the_dtc_3d_preset_arch_kwargs() -> None:
    """nnU-Net's stock build path (as nnUNetTrainer and the predictor use it) with the preset's kwargs."""
    config = configuration_manager(3)
    preset = load_preset("dtc-3d")
    assert preset.network_class_name == DTC_PLAIN
    original = planned_network(config)
    network = planned_network(config, preset.network_class_name, preset.arch_kwargs)
    assert type(network) is DTCPlainConvUNet
    assert n_parameters(network) == n_parameters(original) + dtc_parameters(transposed_convs(original))
    assert all(m.coordinates.weight.abs().max() == 0 for m in dtcs(network))
    assert [m.stride for m in dtcs(network)] == [(2, 2, 2), (1, 2, 2)]


def test_wrapping_keeps_the_planned_network_exactly() -> None:
    """The original network's weights loaded into the DTC network (path (a) = its transposed convs) with the
    deformable 1x1 path zeroed give the original's outputs: nothing else changed."""
    config = configuration_manager(3)
    torch.manual_seed(0)
    original = planned_network(config)
    network = planned_network(config, DTC_PLAIN, {"dtc": {}})
    state = {}
    for key, value in original.state_dict().items():
        for index in range(len(original.decoder.transpconvs)):
            key = key.replace(f"transpconvs.{index}.", f"transpconvs.{index}.upsampling.")
        state[key] = value
    missing, unexpected = network.load_state_dict(state, strict=False)
    assert not unexpected and all(".features." in k or ".coordinates." in k for k in missing) and missing
    for m in dtcs(network):
        nn.init.zeros_(m.features.weight)
        nn.init.zeros_(m.features.bias)
    x = torch.rand(1, 1, *config.patch_size)
    for ours, theirs in zip(network(x), original(x)):
        torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_residual_encoder_unet_with_dtc(spatial_dims: int) -> None:
    config = configuration_manager(spatial_dims, RESENC_UNET)
    original = planned_network(config)
    network = planned_network(config, "nnunet_deconver.architectures.dtc_upsampling.DTCResidualEncoderUNet",
                              {"dtc": {"receptive_field": 2.0}})
    assert type(original) is ResidualEncoderUNet and type(network) is DTCResidualEncoderUNet
    assert n_parameters(network) == n_parameters(original) + dtc_parameters(transposed_convs(original))
    assert len(dtcs(network)) == 2 and {m.receptive_field for m in dtcs(network)} == {2.0}
    assert all(m.coordinates.weight.abs().max() == 0 for m in dtcs(network))
    assert network(torch.rand(1, 1, *config.patch_size))[0].shape == (1, 3, *config.patch_size)


def test_linear_base_upsampling_replaces_the_transposed_convs() -> None:
    config = configuration_manager(2)
    network = planned_network(config, DTC_PLAIN, {"dtc": {"base_upsampling": "linear", "use_weights": False}})
    for m in dtcs(network):
        assert type(m.upsampling) is nn.Conv2d and m.upsampling.kernel_size == (1, 1)
        assert m.base_upsampling == "linear" and m.use_weights is False
    assert network(torch.rand(1, 1, *config.patch_size))[0].shape == (1, 3, *config.patch_size)


def test_unknown_dtc_settings_in_a_network_give_one_line_errors() -> None:
    config = configuration_manager(2)
    for build in (lambda: planned_network(config, DTC_PLAIN, {"dtc": {"lambda": 2}}),
                  lambda: DeconverUNet(1, 3, [4, 8, 16], nn.Conv2d, 3, [1, 2, 2], 2, dtc={"lambda": 2})):
        with pytest.raises(ValueError, match=r"Unknown DTC setting\(s\) \['lambda'\]") as error:
            build()
        assert "\n" not in str(error.value)


def test_nnunet_toggles_deep_supervision_of_the_dtc_unet() -> None:
    config = configuration_manager(2)
    network = nnUNetTrainerDTC.build_network_architecture(None, config, 1, 3, enable_deep_supervision=True)
    x = torch.rand(1, 1, *config.patch_size)
    fake_trainer = SimpleNamespace(is_ddp=False, network=network)
    nnUNetTrainer.set_deep_supervision_enabled(fake_trainer, False)
    single = network(x)
    assert isinstance(single, torch.Tensor) and single.shape == (1, 3, *config.patch_size)
    nnUNetTrainer.set_deep_supervision_enabled(fake_trainer, True)
    outputs = network(x)
    assert isinstance(outputs, list) and len(outputs) == 2
    torch.testing.assert_close(outputs[0], single)


def test_predictor_style_rebuild_loads_a_trained_checkpoint_strictly() -> None:
    """The predictor rebuilds without deep supervision and loads the training weights strictly."""
    config = configuration_manager(3)
    trained = nnUNetTrainerDTC.build_network_architecture(None, config, 1, 3, True)
    with torch.no_grad():
        for m in dtcs(trained):
            m.coordinates.weight.normal_(0, 0.5)  # a trained (non-zero) coordinate branch
    rebuilt = nnUNetTrainerDTC.build_network_architecture(None, config, 1, 3, enable_deep_supervision=False)
    rebuilt.load_state_dict(trained.state_dict(), strict=True)
    assert any(".coordinates.weight" in key for key in trained.state_dict())
    x = torch.rand(1, 1, *config.patch_size)
    torch.testing.assert_close(rebuilt(x), trained(x)[0])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_dtc_unet_under_cpu_autocast_is_finite_and_close_to_fp32(dtype: torch.dtype) -> None:
    torch.manual_seed(1)
    config = configuration_manager(3)
    network = nnUNetTrainerDTC.build_network_architecture(None, config, 1, 3, enable_deep_supervision=False)
    with torch.no_grad():
        for m in dtcs(network):
            m.coordinates.weight.normal_(0, 0.5)
    x = torch.randn(1, 1, *config.patch_size)
    with torch.no_grad():
        reference = network(x)
        with torch.autocast("cpu", dtype=dtype):
            out = network(x)
    assert torch.isfinite(out).all()
    error = (out.float() - reference).norm() / reference.norm()
    assert error < 0.1 if dtype == torch.bfloat16 else error < 0.02


# --------------------------------------------------------------------------------------------------
# Deconver and Factorizer with DTC upsampling
# --------------------------------------------------------------------------------------------------


def _deconver(dtc: dict | None, spatial_dims: int) -> DeconverUNet:
    if spatial_dims == 2:
        return DeconverUNet(1, 3, [4, 8, 16], nn.Conv2d, 3, [1, 2, 2], 2, deep_supervision=True, dtc=dtc)
    return DeconverUNet(1, 3, [4, 8, 16], nn.Conv3d, [[1, 3, 3], [3, 3, 3], [3, 3, 3]],
                        [[1, 1, 1], [1, 2, 2], [2, 2, 2]], 2, deep_supervision=True, dtc=dtc)


def _factorizer(dtc: dict | None, spatial_dims: int) -> FactorizerUNet:
    if spatial_dims == 2:
        return FactorizerUNet(1, 3, [8, 16, 32], nn.Conv2d, 3, [1, 2, 2], 2, deep_supervision=True,
                              matricize="swin", head_dim=4, window=4, patch_size=(16, 16), dtc=dtc)
    return FactorizerUNet(1, 3, [8, 16, 32], nn.Conv3d, 3, [[1, 1, 1], [1, 2, 2], [2, 2, 2]], 2,
                          deep_supervision=True, matricize="local", head_dim=4, window=2, patch_size=(4, 16, 16),
                          dtc=dtc)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("build", [_deconver, _factorizer], ids=["deconver", "factorizer"])
def test_plugin_networks_upsample_with_dtc_when_asked(build, spatial_dims: int, monkeypatch) -> None:
    monkeypatch.setenv("NNUNET_DECONVER_NDC_KERNEL", "torch")  # DTC is under test, not the (compiled-on-first-use) NDC kernel
    torch.manual_seed(2)
    plain = build(None, spatial_dims)
    assert not dtcs(plain)
    network = build({"receptive_field": 2.0, "base_upsampling": "linear"}, spatial_dims)
    upsamplers = list(network.decoder.upsamplers)
    assert all(isinstance(m, DeformableTransposedConv) for m in upsamplers) and len(upsamplers) == 2
    expected_strides = [(2, 2), (2, 2)] if spatial_dims == 2 else [(2, 2, 2), (1, 2, 2)]
    assert [m.stride for m in upsamplers] == expected_strides  # deepest first
    assert {m.receptive_field for m in upsamplers} == {2.0} and {m.base_upsampling for m in upsamplers} == {"linear"}
    size = (16, 16) if spatial_dims == 2 else (4, 16, 16)
    outputs = network(torch.rand(1, 1, *size))
    assert outputs[0].shape == (1, 2, *size)
    # the coordinate branches take part in training
    sum(o.sum() for o in outputs).backward()
    assert all(m.coordinates.weight.grad is not None for m in upsamplers)


# --------------------------------------------------------------------------------------------------
# dtc-offsets analysis (sampling positions of the last decoder DTC)
# --------------------------------------------------------------------------------------------------


def _tiny_dtc_unet(spatial_dims: int) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(3)
    config = configuration_manager(spatial_dims)
    network = nnUNetTrainerDTC.build_network_architecture(None, config, 1, 3, enable_deep_supervision=False)
    return network.eval(), torch.rand(1, 1, *config.patch_size)


def _base_positions(output_size: tuple[int, ...], stride: tuple[int, ...]) -> np.ndarray:
    """(j + 0.5) / s - 0.5 per axis, in input voxel coordinates, axis order."""
    axes = [(np.arange(n) + 0.5) / s - 0.5 for n, s in zip(output_size, stride)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_sampling_field_is_the_base_grid_for_a_zero_coordinate_branch(spatial_dims: int, tmp_path) -> None:
    network, x = _tiny_dtc_unet(spatial_dims)
    dtc = last_dtc(network)
    assert dtc is network.decoder.transpconvs[-1]  # the highest-resolution upsampling
    field = sampling_field(network, dtc, x)
    output_size = tuple(x.shape[2:])  # the last DTC upsamples to the network's input resolution
    expected_stride = (2, 2) if spatial_dims == 2 else (1, 2, 2)
    assert field.stride == expected_stride
    assert field.displacement.shape == field.positions.shape == (*output_size, spatial_dims)
    assert np.abs(field.displacement).max() == 0
    np.testing.assert_allclose(field.positions, _base_positions(output_size, expected_stride), atol=1e-5)
    path = tmp_path / "offsets.png"
    save_sampling_figure(x[0, 0].numpy(), field, path, slice_index=1 if spatial_dims == 3 else None)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_sampling_field_reports_a_known_displacement_in_voxels_and_axis_order(spatial_dims: int, tmp_path) -> None:
    """Offset +1 voxel along the first in-plane axis (H) only: displacement (..., 1, 0) in axis order and
    positions = base grid + 1 along that axis, the rest untouched."""
    network, x = _tiny_dtc_unet(spatial_dims)
    dtc = last_dtc(network)
    offsets = [0.0] * spatial_dims
    offsets[-2] = SATURATED
    with torch.no_grad():
        dtc.coordinates.bias.copy_(torch.tensor([*offsets, *[SATURATED] * spatial_dims]))
    field = sampling_field(network, dtc, x)
    expected_displacement = np.zeros(spatial_dims)
    expected_displacement[-2] = 1.0
    np.testing.assert_allclose(field.displacement, np.broadcast_to(expected_displacement, field.displacement.shape),
                               atol=1e-5)
    base = _base_positions(tuple(x.shape[2:]), dtc.stride)
    np.testing.assert_allclose(field.positions, base + expected_displacement, atol=1e-5)
    path = tmp_path / "offsets.png"
    save_sampling_figure(x[0, 0].numpy(), field, path, slice_index=0 if spatial_dims == 3 else None)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_last_dtc_is_none_without_dtc() -> None:
    assert last_dtc(planned_network(configuration_manager(2))) is None
