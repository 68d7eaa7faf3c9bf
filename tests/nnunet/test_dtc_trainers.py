"""DTC trainers and presets: discovery by nnU-Net, the networks they build from plans, derived plans."""

from __future__ import annotations

import copy

import pytest
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_deconver.architectures import DeconverUNet
from nnunet_deconver.architectures.dtc_settings import check_dtc_settings
from nnunet_deconver.architectures.dtc_upsampling import DTCPlainConvUNet, DTCResidualEncoderUNet
from nnunet_deconver.layers.dtc import DeformableTransposedConv
from nnunet_deconver.layers.ndc import NonnegativeDeconvolution
from nnunet_deconver.nnunet.derived_plans import derive_plans
from nnunet_deconver.nnunet.presets import available_presets, load_preset
from support.networks import dtc_parameters, dtcs, n_parameters, planned_network, transposed_convs
from support.plans import DTC_PLAIN_UNET as DTC_PLAIN
from support.plans import PLAIN_UNET, RESENC_UNET, nnunet_plans, resenc_plans
from support.plans import narrow_configuration as configuration_manager
from nnunet_deconver.nnunet.trainers import (
    nnUNetTrainerDeconverDTC,
    nnUNetTrainerDTC,
    nnUNetTrainerDTC_demo,
    nnUNetTrainerDTC_rf2,
    nnUNetTrainerDTC_rf10,
    nnUNetTrainerDTC_rfinf,
    nnUNetTrainerDTC_smoke,
    nnUNetTrainerResEncDTC,
)

DTC_RESENC = "nnunet_deconver.architectures.dtc_upsampling.DTCResidualEncoderUNet"
DTC_TRAINERS = [nnUNetTrainerDTC, nnUNetTrainerDTC_rf2, nnUNetTrainerDTC_rf10, nnUNetTrainerDTC_rfinf,
                nnUNetTrainerDTC_smoke, nnUNetTrainerDTC_demo, nnUNetTrainerResEncDTC, nnUNetTrainerDeconverDTC]


@pytest.fixture(autouse=True)
def _torch_ndc_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Deconver forwards here test DTC, not the NDC CPU kernel (compiled on first use)."""
    monkeypatch.setenv("NNUNET_DECONVER_NDC_KERNEL", "torch")


# --------------------------------------------------------------------------------------------------
# Networks the trainers build from nnU-Net plans
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("trainer", "receptive_field"),
    [(nnUNetTrainerDTC, 1.0), (nnUNetTrainerDTC_rf2, 2.0), (nnUNetTrainerDTC_rf10, 10.0),
     (nnUNetTrainerDTC_rfinf, None), (nnUNetTrainerDTC_smoke, 1.0)],
    ids=lambda v: getattr(v, "__name__", str(v)),
)
def test_dtc_trainers_build_the_planned_unet_with_their_receptive_field(trainer, receptive_field) -> None:
    config = configuration_manager(3)
    network = trainer.build_network_architecture(None, config, 1, 3, enable_deep_supervision=False)
    assert type(network) is DTCPlainConvUNet
    assert [m.receptive_field for m in dtcs(network)] == [receptive_field] * 2
    assert network(torch.rand(1, 1, *config.patch_size)).shape == (1, 3, *config.patch_size)


@pytest.mark.parametrize("trainer", [nnUNetTrainerDTC, nnUNetTrainerResEncDTC])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_residual_encoder_plans_build_the_dtc_residual_encoder_unet(trainer, spatial_dims: int) -> None:
    config = configuration_manager(spatial_dims, RESENC_UNET)
    network = trainer.build_network_architecture(None, config, 1, 3, enable_deep_supervision=True)
    assert type(network) is DTCResidualEncoderUNet
    original = planned_network(config)
    assert n_parameters(network) == n_parameters(original) + dtc_parameters(transposed_convs(original))
    assert all(m.coordinates.weight.abs().max() == 0 for m in dtcs(network))


def test_resenc_trainer_refuses_plain_conv_unet_plans_with_a_clear_error() -> None:
    with pytest.raises(ValueError, match="nnUNetTrainerResEncDTC adds DTC to nnU-Net's ResidualEncoderUNet") as error:
        nnUNetTrainerResEncDTC.build_network_architecture(None, configuration_manager(3), 1, 3, True)
    message = str(error.value)
    assert "\n" not in message and PLAIN_UNET in message and "nnUNetPlannerResEnc" in message
    assert "nnUNetTrainerDTC" in message


def test_dtc_trainer_refuses_plans_of_another_network() -> None:
    plans = PlansManager(derive_plans(nnunet_plans(), [load_preset("deconver-2d-k5")], "P", "nnUNetPlans"))
    with pytest.raises(ValueError, match="plans prescribe DeconverUNet but nnUNetTrainerDTC trains") as error:
        nnUNetTrainerDTC.build_network_architecture(plans, plans.get_configuration("2d"), 1, 3, True)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_deconver_dtc_trainer_builds_deconver_with_dtc_upsampling(spatial_dims: int) -> None:
    config = configuration_manager(spatial_dims)
    network = nnUNetTrainerDeconverDTC.build_network_architecture(None, config, 1, 3, enable_deep_supervision=True)
    assert type(network) is DeconverUNet
    upsamplers = list(network.decoder.upsamplers)
    assert len(upsamplers) == 2 and all(isinstance(m, DeformableTransposedConv) for m in upsamplers)
    assert {m.receptive_field for m in upsamplers} == {1.0}
    assert network(torch.rand(1, 1, *config.patch_size))[0].shape == (1, 3, *config.patch_size)


def test_deconver_dtc_trainer_refuses_deconver_plans_without_dtc() -> None:
    """The trainer's name promises DTC: plans that prescribe a Deconver without it are refused, not
    trained silently without DTC."""
    plans = PlansManager(derive_plans(nnunet_plans(), [load_preset("deconver-2d-k5")], "P", "nnUNetPlans"))
    with pytest.raises(ValueError, match="without 'dtc'") as error:
        nnUNetTrainerDeconverDTC.build_network_architecture(plans, plans.get_configuration("2d"), 1, 3, True)
    assert "\n" not in str(error.value)


# --------------------------------------------------------------------------------------------------
# Presets and derived plans
# --------------------------------------------------------------------------------------------------


DTC_PRESETS = ["dtc-2d", "dtc-3d", "dtc-resenc-2d", "dtc-resenc-3d", "deconver-dtc-2d", "deconver-dtc-3d"]


def test_the_dtc_presets_ship_with_valid_dtc_settings() -> None:
    assert set(DTC_PRESETS) <= set(available_presets())
    for name in DTC_PRESETS:
        preset = load_preset(name)
        assert preset.dimension == int(name[-2])
        settings = check_dtc_settings(preset.arch_kwargs["dtc"])
        layer = DeformableTransposedConv(2, 2, (2,) * preset.dimension, **settings)  # accepted by the layer
        assert layer.receptive_field == 1.0 and layer.base_upsampling == "transposed"  # the paper's default


@pytest.mark.parametrize(
    ("source", "presets", "network_class"),
    [(nnunet_plans, ["dtc-2d", "dtc-3d"], DTC_PLAIN), (resenc_plans, ["dtc-resenc-2d", "dtc-resenc-3d"], DTC_RESENC)],
    ids=["plain", "resenc"],
)
def test_dtc_presets_keep_the_planned_architecture_and_add_dtc(source, presets, network_class) -> None:
    plans = source()
    derived = derive_plans(plans, [load_preset(name) for name in presets], "nnUNetDTCPlans", plans["plans_name"])
    assert plans == source()  # the source is not modified
    for configuration_name, preset_name in zip(("2d", "3d_fullres"), presets):
        planned, ours = plans["configurations"][configuration_name], derived["configurations"][configuration_name]
        architecture = ours["architecture"]
        assert architecture["network_class_name"] == network_class
        assert architecture["arch_kwargs"] == {**planned["architecture"]["arch_kwargs"],
                                               "dtc": load_preset(preset_name).arch_kwargs["dtc"]}
        assert architecture["_kw_requires_import"] == planned["architecture"]["_kw_requires_import"]
        assert {k: v for k, v in ours.items() if k != "architecture"} == {
            k: v for k, v in planned.items() if k != "architecture"}
    assert derived["configurations"]["3d_cascade_fullres"] == plans["configurations"]["3d_cascade_fullres"]
    assert derived["nnunet_deconver"]["presets"] == dict(zip(("2d", "3d_fullres"), presets))


@pytest.mark.parametrize(
    ("source", "preset", "message"),
    [(resenc_plans, "dtc-3d", "wraps PlainConvUNet but '3d_fullres' plans ResidualEncoderUNet"),
     (nnunet_plans, "dtc-resenc-3d", "wraps ResidualEncoderUNet but '3d_fullres' plans PlainConvUNet"),
     (resenc_plans, "dtc-2d", "wraps PlainConvUNet but '2d' plans ResidualEncoderUNet")],
)
def test_a_dtc_preset_refuses_plans_of_the_other_network(source, preset, message) -> None:
    with pytest.raises(ValueError, match=message) as error:
        derive_plans(source(), [load_preset(preset)], "P", "nnUNetPlans")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_stock_trainer_builds_the_dtc_unet_that_derived_plans_prescribe(spatial_dims: int) -> None:
    """nnUNetTrainer (get_network_from_plans, InitWeights_He) on dtc-* derived plans: the planned
    PlainConvUNet plus exactly the DTC parameters, the coordinate branch still zero."""
    preset = load_preset(f"dtc-{spatial_dims}d")
    plans = nnunet_plans()
    derived = PlansManager(derive_plans(plans, [preset], "nnUNetDTCPlans", "nnUNetPlans"))
    name = "2d" if spatial_dims == 2 else "3d_fullres"
    network = nnUNetTrainer.build_network_architecture(derived, derived.get_configuration(name), 2, 3, True)
    original_plans = PlansManager(plans)
    original = nnUNetTrainer.build_network_architecture(original_plans, original_plans.get_configuration(name), 2, 3,
                                                        True)
    assert type(network) is DTCPlainConvUNet
    assert n_parameters(network) == n_parameters(original) + dtc_parameters(transposed_convs(original))
    assert len(dtcs(network)) == len(original.decoder.transpconvs)
    assert all(m.coordinates.weight.abs().max() == 0 and m.coordinates.bias.abs().max() == 0 for m in dtcs(network))
    # the DTC trainer itself refuses these plans (they already add DTC) and says to use nnUNetTrainer
    with pytest.raises(ValueError, match="nnUNetTrainer"):
        nnUNetTrainerDTC.build_network_architecture(derived, derived.get_configuration(name), 2, 3, True)


def test_deconver_dtc_presets_build_deconver_with_dtc() -> None:
    plans = nnunet_plans()
    derived = derive_plans(plans, [load_preset("deconver-dtc-2d"), load_preset("deconver-dtc-3d")], "P", "nnUNetPlans")
    manager = PlansManager(derived)
    for name, kernel in (("2d", 5), ("3d_fullres", 3)):
        kwargs = derived["configurations"][name]["architecture"]["arch_kwargs"]
        assert "dtc" in kwargs
        assert kwargs["strides"] == plans["configurations"][name]["architecture"]["arch_kwargs"]["strides"]
        for trainer in (nnUNetTrainer, nnUNetTrainerDeconverDTC):
            network = trainer.build_network_architecture(manager, manager.get_configuration(name), 1, 2, True)
            assert type(network) is DeconverUNet
            assert len(dtcs(network)) == len(kwargs["strides"]) - 1
            assert {m.receptive_field for m in dtcs(network)} == {1.0}
            assert max(max(m.kernel_size) for m in network.modules() if isinstance(m, NonnegativeDeconvolution)) == kernel
            assert [m.stride for m in network.decoder.upsamplers] == [
                tuple(s) for s in reversed(kwargs["strides"][1:])]


def test_resenc_plans_helper_is_what_the_dtc_resenc_preset_expects() -> None:
    """Guard for the fixture above: the ResEnc plans really build nnU-Net's ResidualEncoderUNet."""
    plans = PlansManager(copy.deepcopy(resenc_plans()))
    network = nnUNetTrainer.build_network_architecture(plans, plans.get_configuration("3d_fullres"), 1, 2, True)
    assert type(network).__name__ == "ResidualEncoderUNet"
