"""Presets, derived plans files and the trainers that follow them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_deconver.architectures import DeconverUNet
from nnunet_deconver.layers import NonnegativeDeconvolution
from nnunet_deconver.architectures.factorizer_unet import FactorizerUNet
from nnunet_deconver.layers.positional_embedding import PositionalEmbedding
from nnunet_deconver.nnunet.derived_plans import derive_plans, write_derived_plans
from nnunet_deconver.nnunet.trainers import nnUNetTrainerFactorizerLocal, nnUNetTrainerFactorizerSwin
from nnunet_deconver.nnunet.lr_schedules import WarmupCosineLRScheduler
from nnunet_deconver.nnunet.presets import available_presets, load_preset
from nnunet_deconver.nnunet.trainers import nnUNetTrainerDeconver, nnUNetTrainerDeconver_k5
from support.plans import DECONVER_UNET as DECONVER
from support.plans import DTC_PLAIN_UNET as DTC_UNET
from support.plans import FACTORIZER_UNET as FACTORIZER
from support.plans import nnunet_plans

def test_every_shipped_preset_loads() -> None:
    names = set(available_presets())
    assert {"deconver-2d-k3", "deconver-3d-k5", "deconver-isles22-k3", "deconver-brats23-k5", "deconver-glas-k5"} <= names
    assert {"factorizer-swin-3d", "factorizer-local-2d", "factorizer-brats-swin", "factorizer-isles22-global"} <= names
    assert {"sum-2d", "sum-3d", "sum-paper-2d"} <= names
    families = {"deconver-": "DeconverUNet", "factorizer-": "FactorizerUNet", "dtc-resenc-": "DTCResidualEncoderUNet",
                "dtc-": "DTCPlainConvUNet", "sum-": "SUMNet"}
    for name in names:
        family = next(cls for prefix, cls in families.items() if name.startswith(prefix))
        assert load_preset(name).network_class_name.endswith(family), name


def test_factorizer_presets_carry_the_planned_patch_size_for_the_positional_embedding() -> None:
    """nnU-Net's stock trainer builds from arch_kwargs alone, so the patch size must be in them."""
    derived = derive_plans(nnunet_plans(), [load_preset("factorizer-swin-2d"), load_preset("factorizer-local-3d")],
                           "P", "nnUNetPlans")
    two_d, three_d = (derived["configurations"][c]["architecture"]["arch_kwargs"] for c in ("2d", "3d_fullres"))
    assert two_d["patch_size"] == [64, 64] and "matricize" not in two_d  # swin: FactorizerUNet's default
    assert three_d["patch_size"] == [16, 32, 32] and three_d["matricize"] == "local"
    assert "patch_size" not in derive_plans(nnunet_plans(), [load_preset("deconver-2d-k5")], "P", "nnUNetPlans")[
        "configurations"]["2d"]["architecture"]["arch_kwargs"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"dimension": 3, "network_class_name": "my.Net"}, "Unknown architecture class 'my.Net'"),
        ({"dimension": 3, "network_class_name": "nnunet_deconver.architectures.deconver_unet.DeconverUNet",
          "arch_kwargs": {"kernel": 3}}, r"Unknown hyper-parameter\(s\) \['kernel'\] for DeconverUNet"),
        ({"dimension": 4, "network_class_name": "x"}, "'dimension' must be 2 or 3"),
        ({"dimension": 2, "network_class_name": "x", "colour": 1}, r"unknown keys \['colour'\]"),
    ],
)
def test_bad_presets_get_one_line_errors(tmp_path: Path, content: dict, message: str) -> None:
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=message) as error:
        load_preset(str(path))
    assert "\n" not in str(error.value)


def test_unknown_preset_names_the_shipped_ones() -> None:
    with pytest.raises(ValueError, match="deconver-3d-k3"):
        load_preset("deconver-4d")


def test_derived_plans_swap_only_the_architecture() -> None:
    plans = nnunet_plans()
    derived = derive_plans(plans, [load_preset("deconver-2d-k5"), load_preset("deconver-isles22-k3")],
                           "nnUNetDeconverPlans", "nnUNetPlans")
    assert plans == nnunet_plans()  # the source is not modified
    two_d, three_d = derived["configurations"]["2d"], derived["configurations"]["3d_fullres"]
    assert two_d["data_identifier"] == "nnUNetPlans_2d" and three_d["patch_size"] == [16, 32, 32]
    assert two_d["architecture"]["arch_kwargs"]["features_per_stage"] == [32, 64, 128, 256, 320]  # nnU-Net's widths
    assert two_d["architecture"]["arch_kwargs"]["ndc_kernel_size"] == 5
    assert three_d["architecture"]["arch_kwargs"]["features_per_stage"] == [64, 128, 256, 512]  # min(64 * 2^l, 512)
    assert derived["configurations"]["3d_cascade_fullres"] == {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}
    assert derived["plans_name"] == "nnUNetDeconverPlans"
    assert derived["nnunet_deconver"]["presets"] == {"2d": "deconver-2d-k5", "3d_fullres": "deconver-isles22-k3"}


def test_paper_topology_keeps_the_first_planned_strides_and_refuses_more_stages() -> None:
    derived = derive_plans(nnunet_plans(), [load_preset("deconver-3d-k3")], "P", "nnUNetPlans")
    assert derived["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["strides"][1] == [1, 2, 2]
    with pytest.raises(ValueError, match="needs 5 stages but nnU-Net planned 4"):
        derive_plans(nnunet_plans(), [load_preset("deconver-brats23-k3")], "P", "nnUNetPlans")
    with pytest.raises(ValueError, match="both 3D"):
        derive_plans(nnunet_plans(), [load_preset("deconver-3d-k3"), load_preset("deconver-3d-k5")], "P", "nnUNetPlans")


def write_source_plans(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = root / "Dataset999_Toy"
    folder.mkdir(parents=True)
    (folder / "nnUNetPlans.json").write_text(json.dumps(nnunet_plans()))
    monkeypatch.setattr("nnunet_deconver.nnunet.derived_plans.nnUNet_preprocessed", str(root))
    return folder


@pytest.mark.parametrize(
    ("network_class_name", "arch_kwargs", "named"),
    [
        (DECONVER, {"ndc_kernel_size": 4}, ["ndc_kernel_size", "4"]),
        (DECONVER, {"ratio": -2}, ["ratio", "-2"]),
        (DECONVER, {"groups": 3}, ["groups", "3"]),
        (FACTORIZER, {"window": 128}, ["window", "128"]),
        (FACTORIZER, {"nmf_rank": 0}, ["nmf_rank", "0"]),
        (DTC_UNET, {"dtc": {"receptive_feild": 2}}, ["receptive_feild"]),
        (DTC_UNET, {"dtc": {"receptive_field": -1.0}}, ["receptive_field", "-1"]),
    ],
)
def test_bad_hyper_parameters_are_refused_before_a_plans_file_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, network_class_name: str, arch_kwargs: dict, named: list[str]
) -> None:
    """`nnunet-deconver plan` builds the network on the meta device first: one line, nothing written."""
    folder = write_source_plans(tmp_path, monkeypatch)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"dimension": 3, "network_class_name": network_class_name, "arch_kwargs": arch_kwargs}))
    with pytest.raises(ValueError) as error:
        write_derived_plans("Dataset999_Toy", [load_preset(str(path))], "nnUNetPlans", "nnUNetBadPlans")
    message = str(error.value)
    assert "\n" not in message and "'bad'" in message and "'3d_fullres'" in message
    assert all(word in message for word in named), message
    assert not (folder / "nnUNetBadPlans.json").exists()


def test_write_derived_plans_never_replaces_a_different_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = write_source_plans(tmp_path, monkeypatch)
    source_before = (folder / "nnUNetPlans.json").read_text()
    target = write_derived_plans("Dataset999_Toy", [load_preset("deconver-3d-k3")])
    assert target == folder / "nnUNetDeconverPlans.json"
    assert write_derived_plans("Dataset999_Toy", [load_preset("deconver-3d-k3")]) == target  # same content: fine
    written = target.read_text()
    with pytest.raises(FileExistsError, match="exists with other content"):
        write_derived_plans("Dataset999_Toy", [load_preset("deconver-3d-k5")])
    assert target.read_text() == written and (folder / "nnUNetPlans.json").read_text() == source_before
    with pytest.raises(ValueError, match="other than the source plans"):
        write_derived_plans("Dataset999_Toy", [load_preset("deconver-3d-k3")], plans_name="nnUNetPlans")


def ndc_kernels(network: torch.nn.Module) -> set[tuple[int, ...]]:
    return {m.kernel_size for m in network.modules() if isinstance(m, NonnegativeDeconvolution)}


def test_stock_and_deconver_trainers_build_what_the_plans_prescribe() -> None:
    derived = derive_plans(nnunet_plans(), [load_preset("deconver-3d-k5")], "nnUNetDeconverPlans", "nnUNetPlans")
    plans_manager = PlansManager(derived)
    configuration = plans_manager.get_configuration("3d_fullres")
    for trainer in (nnUNetTrainer, nnUNetTrainerDeconver):
        network = trainer.build_network_architecture(plans_manager, configuration, 2, 3, True)
        assert isinstance(network, DeconverUNet)
        assert ndc_kernels(network) == {(1, 5, 5), (5, 5, 5)}
        assert [o.shape[1] for o in network(torch.rand(1, 2, 16, 32, 32))] == [3, 3, 3]
    k3_plans = PlansManager(derive_plans(nnunet_plans(), [load_preset("deconver-3d-k3")], "P", "nnUNetPlans"))
    with pytest.raises(ValueError, match="plans prescribe 3"):
        nnUNetTrainerDeconver_k5.build_network_architecture(
            k3_plans, k3_plans.get_configuration("3d_fullres"), 2, 3, True)


def test_stock_and_factorizer_trainers_build_the_prescribed_factorizer_with_its_embedding() -> None:
    """nnU-Net's own nnUNetTrainer reads only arch_kwargs: the derived plans carry the patch size that
    sizes the bridge's positional embedding."""
    derived = derive_plans(nnunet_plans(), [load_preset("factorizer-local-3d")], "P", "nnUNetPlans")
    plans_manager = PlansManager(derived)
    configuration = plans_manager.get_configuration("3d_fullres")
    for trainer in (nnUNetTrainer, nnUNetTrainerFactorizerLocal):
        network = trainer.build_network_architecture(plans_manager, configuration, 2, 3, True)
        assert isinstance(network, FactorizerUNet) and network.nmf_layers()[0].matricizer.kind == "local"
        (embedding,) = [m for m in network.modules() if isinstance(m, PositionalEmbedding)]
        assert tuple(embedding.embedding.shape[2:]) == (16 // 4, 32 // 8, 32 // 8)  # patch / stride products
        assert [o.shape[1] for o in network(torch.rand(1, 2, 16, 32, 32))] == [3, 3, 3]
    with pytest.raises(ValueError, match="prescribe 'local'"):
        nnUNetTrainerFactorizerSwin.build_network_architecture(plans_manager, configuration, 2, 3, True)


def test_warmup_cosine_schedule() -> None:
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
    scheduler = WarmupCosineLRScheduler(optimizer, 1e-4, max_steps=1000)
    rates = []
    for epoch in range(1000):
        scheduler.step(epoch)
        rates.append(optimizer.param_groups[0]["lr"])
    assert math.isclose(rates[0], 1e-5)  # warm-up starts ten times lower
    assert math.isclose(rates[10], 1e-4) and max(rates) == pytest.approx(1e-4)  # 1 % of 1000 epochs
    assert all(a < b for a, b in zip(rates[:10], rates[1:11]))
    assert all(a >= b for a, b in zip(rates[10:], rates[11:])) and rates[-1] < 1e-8
    assert rates[505] == pytest.approx(5e-5)  # half-way through the cosine
