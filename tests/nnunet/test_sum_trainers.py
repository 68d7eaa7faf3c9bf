"""SUM trainers and presets on nnU-Net plans, the paper recipe's pieces and the authors' weight import."""

from __future__ import annotations

import json

import pytest
import torch
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.random import RandomTransform
from batchgeneratorsv2.transforms.utils.remove_label import RemoveLabelTansform
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_deconver.architectures.sum_authors_weights import authors_key_map, load_authors_weights
from nnunet_deconver.architectures.sum_network import PaperOutputLayer, SUMNet
from nnunet_deconver.layers.shrinkage import AUTHORS_LEAKS, shrinkage_scale
from nnunet_deconver.nnunet.derived_plans import derive_plans
from nnunet_deconver.nnunet.presets import load_preset
from nnunet_deconver.nnunet.sum_recipe import (
    PaperLinearDecay,
    ReconstructionRegularisedLoss,
    SoftIoULoss,
    clip_before_every_step,
    paper_training_transforms,
    soft_iou_loss,
)
from nnunet_deconver.nnunet.trainers import nnUNetTrainerSUM, nnUNetTrainerSUM_paper, nnUNetTrainerSUMRec
from support.plans import configuration_manager as configuration
from support.plans import nnunet_plans

PAPER_PARAMETERS = 343_474


def paper_network_from_preset(deep_supervision: bool = True) -> torch.nn.Module:
    plans = derive_plans(nnunet_plans(), [load_preset("sum-paper-2d")], "nnUNetSUMPlans", "nnUNetPlans")
    config = PlansManager(plans).get_configuration("2d")
    return nnUNetTrainer.build_network_architecture(None, config, 1, 2, enable_deep_supervision=deep_supervision)


def test_the_sum_paper_2d_preset_has_the_authors_parameter_count() -> None:
    network = paper_network_from_preset()
    assert isinstance(network, SUMNet) and isinstance(network.output_layer, PaperOutputLayer)
    assert sum(p.numel() for p in network.parameters()) == PAPER_PARAMETERS
    assert len(network(torch.rand(1, 1, 64, 64))) == 1  # no auxiliary heads: deep supervision gives one map


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_sum_trainer_builds_on_the_planned_topology_and_loads_its_checkpoint_like_the_predictor(spatial_dims) -> None:
    config = configuration(spatial_dims)
    trained = nnUNetTrainerSUM.build_network_architecture(None, config, 2, 3, enable_deep_supervision=True)
    assert isinstance(trained, SUMNet)
    planned = config.network_arch_init_kwargs
    assert [level.conv1.conv.out_channels for level in trained.encoder.levels] == planned["features_per_stage"][:-1]
    x = torch.rand(1, 2, *config.patch_size)
    outputs = trained(x)
    assert len(outputs) == planned["n_stages"] - 1 and tuple(outputs[0].shape[2:]) == tuple(config.patch_size)
    rebuilt = nnUNetTrainerSUM.build_network_architecture(None, config, 2, 3, enable_deep_supervision=False)
    rebuilt.load_state_dict(trained.state_dict(), strict=True)
    torch.testing.assert_close(rebuilt(x), outputs[0])


@pytest.mark.parametrize(("classes", "paper_output"), [(2, True), (3, False)])
def test_paper_trainer_builds_the_papers_widths_and_output(classes: int, paper_output: bool) -> None:
    config = configuration(2)
    network = nnUNetTrainerSUM_paper.build_network_architecture(None, config, 1, classes, enable_deep_supervision=False)
    widths = [level.conv1.conv.out_channels for level in network.encoder.levels]
    assert widths == [8 * 2**level for level in range(len(widths))]
    assert isinstance(network.output_layer, PaperOutputLayer) is paper_output
    assert len(network.decoder.heads) == 0
    assert network.encoder.levels[0].shrink1.leaks == AUTHORS_LEAKS


def test_sum_rec_refuses_plans_whose_ed_cannot_match_the_input(toy_plans, tmp_path, monkeypatch) -> None:
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as nnunet_trainer_module

    monkeypatch.setattr(nnunet_trainer_module, "nnUNet_results", str(tmp_path))
    architecture = toy_plans["configurations"]["2d"]["architecture"]
    architecture["network_class_name"] = "nnunet_deconver.architectures.sum_network.SUMNet"
    architecture["arch_kwargs"] = {key: architecture["arch_kwargs"][key] for key in
                                   ("n_stages", "features_per_stage", "conv_op", "kernel_sizes", "strides")}
    architecture["arch_kwargs"]["ed_channels"] = "classes"
    architecture["_kw_requires_import"] = ["conv_op"]
    dataset_json = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "a": 1}, "numTraining": 5,
                    "file_ending": ".nii.gz"}
    with pytest.raises(ValueError, match=r"nnUNetTrainerSUMRec compares .* ed_channels='classes'") as error:
        nnUNetTrainerSUMRec(toy_plans, "2d", 0, dataset_json, device=torch.device("cpu"))
    assert "\n" not in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_soft_iou_is_the_papers_formula_over_the_whole_batch() -> None:
    p = torch.tensor([[0.9, 0.2], [0.5, 0.0]]).view(2, 1, 2, 1)
    t = torch.tensor([[1.0, 0.0], [1.0, 1.0]]).view(2, 1, 2, 1)
    intersection = 0.9 + 0.5
    union = (0.9 + 0.2 + 0.5 + 0.0) + 3.0 - intersection
    torch.testing.assert_close(soft_iou_loss(p, t), torch.tensor(1 - intersection / (union + 5.0)))


def test_soft_iou_loss_reads_the_papers_map_and_skips_the_ignore_label() -> None:
    network = SUMNet(1, 3, [4, 8, 16], torch.nn.Conv2d, 3, [1, 2, 2], 2, output_layer="paper")
    m = torch.rand(2, 1, 8, 8)
    logits = torch.cat((1 - m, m), dim=1)
    target = (torch.rand(2, 1, 8, 8) > 0.5).long()
    torch.testing.assert_close(SoftIoULoss(network, ignore_label=None)(logits, target),
                               soft_iou_loss(m, target.float()))
    target[:, :, :4] = 2
    valid = (target != 2).float()
    torch.testing.assert_close(SoftIoULoss(network, ignore_label=2)(logits, target),
                               soft_iou_loss(m * valid, (target == 1).float() * valid))


def test_reconstruction_term_is_the_mean_absolute_error_of_the_ed_at_alpha_zero() -> None:
    network = SUMNet(1, 3, [4, 8, 16], torch.nn.Conv2d, 3, [1, 2, 2], 3).double()
    with torch.no_grad():
        for module in network.modules():
            if hasattr(module, "threshold"):
                module.threshold.uniform_(0.1, 0.5)
    segmentation = torch.nn.CrossEntropyLoss()
    loss = ReconstructionRegularisedLoss(segmentation, network, weight=0.35)
    network.register_forward_pre_hook(loss.remember_input)
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    target = torch.randint(0, 3, (2, 16, 16))
    output = network(x)
    with shrinkage_scale(network, 0.0):
        expected = segmentation(output, target) + 0.35 * (x - network.encoder_decoder(x)).abs().mean()
    torch.testing.assert_close(loss(output, target), expected)
    assert all(m.alpha == 1.0 for m in network.modules() if hasattr(m, "alpha"))


def test_paper_learning_rate_decays_linearly_per_epoch() -> None:
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=3.5e-4)
    scheduler = PaperLinearDecay(optimizer, 3.5e-4, 300)
    scheduler.step(0)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(3.5e-4 * 301 / 300)
    scheduler.step(299)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(3.5e-4 / 150)


def test_gradients_are_clipped_to_the_papers_norm_before_every_step() -> None:
    parameter = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    clip_before_every_step(optimizer, lambda: [parameter], 1e-3)
    parameter.grad = torch.tensor([3.0, 4.0, 0.0])
    optimizer.step()
    assert parameter.detach().norm().item() == pytest.approx(1e-3)


def test_paper_augmentation_flips_and_rotates_in_plane_and_keeps_nnunets_label_bookkeeping() -> None:
    nnunet = ComposeTransforms([RandomTransform(MirrorTransform((0, 1)), 0.5), RemoveLabelTansform(-1, 0)])
    composed = paper_training_transforms((32, 32), nnunet)
    mirror, rotation, remove = composed.transforms
    assert isinstance(mirror, MirrorTransform) and mirror.allowed_axes == (1,)
    assert rotation.apply_probability == 0.5 and rotation.transform.num_rot_per_combination == (0, 1, 2)
    assert isinstance(remove, RemoveLabelTansform)
    assert paper_training_transforms((32, 48), nnunet).transforms[1].transform.num_rot_per_combination == (0, 2)
    image = torch.arange(32 * 48.0).view(1, 32, 48)
    for _ in range(10):
        out = paper_training_transforms((32, 48), nnunet)(image=image.clone(), segmentation=(image > 700).clone())
        assert out["image"].shape == image.shape


def authors_layout_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict of the authors' released 2-D SUM layout (the facts sheet), random values."""
    widths, shapes = [1, 8, 16, 32, 64], {}
    for level in range(4):
        c_in, c = widths[level], widths[level + 1]
        shapes |= {f"enc.{level}.c1.weight": (c, c_in, 3, 3), f"enc.{level}.c2.weight": (c, c, 3, 3),
                   f"enc.{level}.s1.t": (c, 1, 1), f"enc.{level}.s2.t": (c, 1, 1),
                   f"dec.{level}.c1.weight": (c, c, 3, 3), f"dec.{level}.c12.weight": (c, c, 3, 3),
                   f"dec.{level}.c2.weight": (c_in, c, 3, 3), f"dec.{level}.s1.t": (c, 1, 1),
                   f"dec.{level}.s2.t": (c_in, 1, 1)}
    shapes |= {"dl.c1.weight": (128, 64, 3, 3), "dl.c2.weight": (64, 128, 3, 3), "dl.s1.t": (128, 1, 1),
               "dl.s2.t": (64, 1, 1), "ol.out.weight": (1, 1, 1, 1)}
    generator = torch.Generator().manual_seed(seed)
    return {key: torch.randn(shape, generator=generator) for key, shape in shapes.items()}


def test_authors_weights_load_into_the_paper_network_key_by_key() -> None:
    network = paper_network_from_preset(deep_supervision=False)
    theirs = authors_layout_state_dict()
    assert len(theirs) == 41
    load_authors_weights(network, theirs)
    ours = network.state_dict()
    for our_key, their_key in authors_key_map(network).items():
        assert torch.equal(ours[our_key], theirs[their_key].reshape(ours[our_key].shape))
    assert torch.equal(network.decoder.levels[0].conv_narrow.conv.weight, theirs["dec.3.c2.weight"])

    del theirs["dl.s2.t"]
    with pytest.raises(ValueError, match=r"missing \['dl.s2.t'\]"):
        load_authors_weights(network, theirs)
    with pytest.raises(ValueError, match="sum-paper-2d preset"):
        load_authors_weights(SUMNet(1, 5, [8, 16, 32, 64, 128], torch.nn.Conv2d, 3, [1, 2, 2, 2, 2], 2), theirs)


def test_imported_weights_become_a_model_folder_nnunets_predictor_loads(tmp_path, monkeypatch) -> None:
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    import nnunet_deconver.nnunet.sum_weight_import as importer

    preprocessed, results = tmp_path / "preprocessed", tmp_path / "results"
    monkeypatch.setattr(importer, "nnUNet_preprocessed", str(preprocessed))
    monkeypatch.setattr(importer, "nnUNet_results", str(results))
    dataset = preprocessed / "Dataset999_Toy"
    dataset.mkdir(parents=True)
    plans = derive_plans(nnunet_plans(), [load_preset("sum-paper-2d")], "nnUNetSUMPaperPlans", "nnUNetPlans")
    (dataset / "nnUNetSUMPaperPlans.json").write_text(json.dumps(plans))
    (dataset / "dataset.json").write_text(json.dumps({"channel_names": {"0": "image"},
                                                      "labels": {"background": 0, "gland": 1},
                                                      "numTraining": 4, "file_ending": ".nii.gz"}))
    weights = tmp_path / "sum_weights.pt"
    torch.save(authors_layout_state_dict(), weights)

    checkpoint = importer.install_authors_weights(weights, "Dataset999_Toy", "nnUNetSUMPaperPlans")
    assert checkpoint == results / "Dataset999_Toy" / "nnUNetTrainerSUM_paper__nnUNetSUMPaperPlans__2d" / \
        "fold_all" / "checkpoint_final.pth"
    predictor = nnUNetPredictor(device=torch.device("cpu"), verbose=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(checkpoint.parents[1]), ("all",))
    predictor.network.load_state_dict(predictor.list_of_parameters[0])
    assert torch.equal(predictor.network.encoder.bottleneck.conv2.conv.weight,
                       authors_layout_state_dict()["dl.c2.weight"])
    with pytest.raises(FileExistsError, match="never replaced"):
        importer.install_authors_weights(weights, "Dataset999_Toy", "nnUNetSUMPaperPlans")


@pytest.mark.parametrize("wrapper", ["plain", "compile"])
def test_nnunet_toggles_the_sums_deep_supervision_through_its_own_call(wrapper: str) -> None:
    from types import SimpleNamespace

    config = configuration(2)
    network = nnUNetTrainerSUM.build_network_architecture(None, config, 1, 2, enable_deep_supervision=True)
    wrapped = torch.compile(network, backend="eager") if wrapper == "compile" else network
    fake_trainer = SimpleNamespace(is_ddp=False, network=wrapped)
    x = torch.rand(1, 1, *config.patch_size)
    nnUNetTrainer.set_deep_supervision_enabled(fake_trainer, False)
    assert isinstance(wrapped(x), torch.Tensor)
    nnUNetTrainer.set_deep_supervision_enabled(fake_trainer, True)
    assert isinstance(wrapped(x), list)
