"""The user's workflow through nnU-Net's own console commands, in subprocesses, on the MNI152 dataset.

Nothing here sets ``nnUNet_extTrainer`` or touches sys.path: the trainers must be found through the
installed package alone, exactly as after ``pip install``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from nnunet_deconver.nnunet.demo.mni152_dataset import MNI152Dataset, write_mni152_dataset
from nnunet_deconver.nnunet.demo.nnunet_commands import NnUNetFolders
from nnunet_deconver.nnunet.plans_topology import TOPOLOGY_KEYS
from support.integration import CONFIGURATIONS, DATASET_ID, TRAINER, model_folder, predict_and_check_held_out_cases, run

pytestmark = pytest.mark.slow

FACTORIZER_TRAINER = "nnUNetTrainerFactorizerSwin_smoke"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[NnUNetFolders, MNI152Dataset]:
    """Plan + preprocess both configurations and train fold 0 of each (--npz, which ensembling needs)."""
    folders = NnUNetFolders.inside(tmp_path_factory.mktemp("nnunet"))
    dataset = write_mni152_dataset(folders.raw, dataset_id=DATASET_ID, n_training=6, n_test=1)
    run(["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", *CONFIGURATIONS,
         "--verify_dataset_integrity", "-np", "1", "-npfp", "1"], folders)
    for configuration in CONFIGURATIONS:
        run(["nnUNetv2_train", str(DATASET_ID), configuration, "0", "-tr", TRAINER, "-device", "cpu", "--npz"],
            folders)
    return folders, dataset


@pytest.mark.parametrize("configuration", CONFIGURATIONS)
def test_training_writes_a_deconver_checkpoint(trained, configuration: str) -> None:
    folders, _ = trained
    checkpoint = torch.load(model_folder(folders, configuration) / "fold_0" / "checkpoint_final.pth",
                            map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == TRAINER
    assert any(".ndc.weight" in key for key in checkpoint["network_weights"])
    assert (model_folder(folders, configuration) / "fold_0" / "validation" / "summary.json").is_file()


@pytest.mark.parametrize("configuration", CONFIGURATIONS)
def test_predict_segments_held_out_cases(trained, configuration: str, tmp_path: Path) -> None:
    folders, dataset = trained
    output = tmp_path / "prediction"
    predict_and_check_held_out_cases(folders, dataset, configuration, TRAINER, output)


def test_find_best_configuration_ranks_both_configurations(trained) -> None:
    folders, _ = trained
    run(["nnUNetv2_find_best_configuration", str(DATASET_ID), "-c", *CONFIGURATIONS, "-tr", TRAINER,
         "-f", "0", "-np", "1"], folders)
    (dataset_folder,) = folders.results.glob(f"Dataset{DATASET_ID}_*")
    inference_information = (dataset_folder / "inference_information.json").read_text()
    assert TRAINER in inference_information


def test_derived_plans_train_and_predict_with_p(trained, tmp_path: Path) -> None:
    """nnunet-deconver plan -> nnUNetv2_train/-predict with -p: the preset's network, shared preprocessed data."""
    folders, dataset = trained
    plan_output = run(["nnunet-deconver", "plan", "-d", str(DATASET_ID), "--preset", "deconver-2d-k3",
                       "--preset", "deconver-3d-k5"], folders)
    assert "nnUNetDeconverPlans.json" in plan_output
    run(["nnUNetv2_train", str(DATASET_ID), "2d", "0", "-p", "nnUNetDeconverPlans", "-tr", TRAINER, "-device", "cpu"],
        folders)
    (dataset_folder,) = folders.results.glob(f"Dataset{DATASET_ID}_*")
    checkpoint = torch.load(dataset_folder / f"{TRAINER}__nnUNetDeconverPlans__2d" / "fold_0" / "checkpoint_final.pth",
                            map_location="cpu", weights_only=False)
    ndc_shapes = {tuple(v.shape[2:]) for k, v in checkpoint["network_weights"].items() if k.endswith(".ndc.weight")}
    assert ndc_shapes == {(3, 3)}  # the preset's kernel, not the trainer's 2-D default of 5
    output = tmp_path / "prediction"
    run(["nnUNetv2_predict", "-i", str(dataset.images_ts), "-o", str(output), "-d", str(DATASET_ID), "-c", "2d",
         "-f", "0", "-p", "nnUNetDeconverPlans", "-tr", TRAINER, "-device", "cpu", "-npp", "1", "-nps", "1"], folders)
    assert sorted(p.name for p in output.glob("*.nii.gz")) == [f"{case}.nii.gz" for case in dataset.test_cases]


def test_plans_written_by_version_0_1_0_train_and_predict(trained, tmp_path: Path) -> None:
    """A derived plans file as 0.1.0's `nnunet-deconver plan` wrote it (the names and hyper-parameters recorded
    in tests/fixtures/v0_1_0_networks.json) trains and predicts with the current code."""
    folders, dataset = trained
    record = json.loads((Path(__file__).parents[1] / "fixtures" / "v0_1_0_networks.json").read_text())
    (legacy,) = [r["architecture"] for r in record["presets"]
                 if (r["preset"], r["plans"], r["configuration"]) == ("deconver-2d-k5", "nnUNetPlans", "2d")]
    (dataset_folder,) = folders.preprocessed.glob(f"Dataset{DATASET_ID}_*")
    plans = json.loads((dataset_folder / "nnUNetPlans.json").read_text())
    planned = plans["configurations"]["2d"]["architecture"]["arch_kwargs"]
    topology = {key: planned[key] for key in TOPOLOGY_KEYS}
    legacy_kwargs = {key: value for key, value in legacy["arch_kwargs"].items() if key not in topology}
    plans["configurations"]["2d"]["architecture"] = {**legacy, "arch_kwargs": {**topology, **legacy_kwargs}}
    plans["plans_name"] = "nnUNetLegacyPlans"
    (dataset_folder / "nnUNetLegacyPlans.json").write_text(json.dumps(plans, indent=4))
    run(["nnUNetv2_train", str(DATASET_ID), "2d", "0", "-p", "nnUNetLegacyPlans", "-tr", TRAINER, "-device", "cpu"],
        folders)
    output = tmp_path / "prediction"
    run(["nnUNetv2_predict", "-i", str(dataset.images_ts), "-o", str(output), "-d", str(DATASET_ID), "-c", "2d",
         "-f", "0", "-p", "nnUNetLegacyPlans", "-tr", TRAINER, "-device", "cpu", "-npp", "1", "-nps", "1"], folders)
    assert sorted(p.name for p in output.glob("*.nii.gz")) == [f"{case}.nii.gz" for case in dataset.test_cases]


@pytest.fixture(scope="module")
def factorizer_trained(trained) -> tuple[NnUNetFolders, MNI152Dataset]:
    """The Swin Factorizer smoke trainer on the same plans and preprocessed data, both configurations."""
    folders, dataset = trained
    for configuration in CONFIGURATIONS:
        run(["nnUNetv2_train", str(DATASET_ID), configuration, "0", "-tr", FACTORIZER_TRAINER, "-device", "cpu"],
            folders)
    return folders, dataset


@pytest.mark.parametrize("configuration", CONFIGURATIONS)
def test_factorizer_trains_and_predicts(factorizer_trained, configuration: str, tmp_path: Path) -> None:
    """nnUNetv2_train / nnUNetv2_predict -tr nnUNetTrainerFactorizerSwin_smoke: a Factorizer checkpoint
    (NMF projections, positional embedding), validation, and segmentations of the held-out cases."""
    folders, dataset = factorizer_trained
    fold = model_folder(folders, configuration, FACTORIZER_TRAINER) / "fold_0"
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == FACTORIZER_TRAINER
    weights = checkpoint["network_weights"]
    assert any(".nmf_branch." in key and key.endswith("project_in.weight") for key in weights)
    assert sum(key.endswith(".embedding") for key in weights) == 1
    assert not any(".ndc." in key for key in weights)
    assert (fold / "validation" / "summary.json").is_file()
    output = tmp_path / "prediction"
    run(["nnUNetv2_predict", "-i", str(dataset.images_ts), "-o", str(output), "-d", str(DATASET_ID),
         "-c", configuration, "-f", "0", "-tr", FACTORIZER_TRAINER, "-device", "cpu", "-npp", "1", "-nps", "1"],
        folders)
    for case in dataset.test_cases:
        predicted = np.asarray(nib.load(output / f"{case}.nii.gz").dataobj)
        reference = np.asarray(nib.load(dataset.labels_ts / f"{case}.nii.gz").dataobj)
        assert predicted.shape == reference.shape
        assert set(np.unique(predicted)) <= {0, 1, 2}


def test_factorizer_inference_settings_and_components_through_the_commands(factorizer_trained, tmp_path: Path) -> None:
    """nnunet-deconver predict with NMF settings (recorded next to the predictions, which are never
    overwritten) and nnunet-deconver nmf-components on the trained 2d Factorizer."""
    folders, dataset = factorizer_trained
    output = tmp_path / "prediction_T1"
    predict = ["nnunet-deconver", "predict", "-i", str(dataset.images_ts), "-o", str(output), "-d", str(DATASET_ID),
               "-c", "2d", "-f", "0", "-tr", FACTORIZER_TRAINER, "-device", "cpu", "-npp", "1", "-nps", "1",
               "--nmf-iters", "1", "--skip-nmf-layers", "2"]
    printed = run(predict, folders)
    assert "T = 1, rank = 1, solver = hals; short-circuited: 2" in printed
    assert sorted(p.name for p in output.glob("*.nii.gz")) == [f"{case}.nii.gz" for case in dataset.test_cases]
    assert json.loads((output / "nmf_inference_settings.json").read_text())["iterations"] == 1
    again = subprocess.run([str(Path(sys.executable).parent / "nnunet-deconver"), *predict[1:-2]],
                           env=folders.environment(), capture_output=True, text=True)
    assert again.returncode == 2 and "already holds files" in again.stderr

    figures = tmp_path / "components"
    case = dataset.test_cases[0]
    printed = run(["nnunet-deconver", "nmf-components", "-m", str(model_folder(folders, "2d", FACTORIZER_TRAINER)),
                   "-i", str(dataset.images_ts / f"{case}_0000.nii.gz"), "-o", str(figures), "--layers", "1", "2"],
                  folders)
    for layer in (1, 2):
        assert (figures / f"nmf_layer{layer:02d}_components.png").read_bytes()[:4] == b"\x89PNG"
    assert "layer 2, encoder level 1" in printed
