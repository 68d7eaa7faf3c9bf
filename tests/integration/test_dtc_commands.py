"""DTC through nnU-Net's own console commands, in subprocesses, on the MNI152 dataset.

``nnUNetv2_train -tr nnUNetTrainerDTC_smoke`` (2d and 3d_fullres) on nnU-Net's own plans,
``nnUNetv2_predict`` with it, and ``nnunet-deconver dtc-offsets`` on the trained 2d model folder.
Helpers (and the dataset size) come from tests/support/integration.py; nothing here sets
``nnUNet_extTrainer``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nnunet_deconver.nnunet.demo.mni152_dataset import MNI152Dataset, write_mni152_dataset
from nnunet_deconver.nnunet.demo.nnunet_commands import NnUNetFolders
from support.integration import CONFIGURATIONS, DATASET_ID, model_folder, predict_and_check_held_out_cases, run

pytestmark = pytest.mark.slow

DTC_TRAINER = "nnUNetTrainerDTC_smoke"


@pytest.fixture(scope="module")
def dtc_trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[NnUNetFolders, MNI152Dataset]:
    """Plan + preprocess both configurations and train fold 0 of each with the DTC smoke trainer (--npz, which
    nnUNetv2_find_best_configuration needs)."""
    folders = NnUNetFolders.inside(tmp_path_factory.mktemp("nnunet_dtc"))
    dataset = write_mni152_dataset(folders.raw, dataset_id=DATASET_ID, n_training=6, n_test=1)
    run(["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", *CONFIGURATIONS,
         "--verify_dataset_integrity", "-np", "1", "-npfp", "1"], folders)
    for configuration in CONFIGURATIONS:
        run(["nnUNetv2_train", str(DATASET_ID), configuration, "0", "-tr", DTC_TRAINER, "-device", "cpu", "--npz"],
            folders)
    return folders, dataset


@pytest.mark.parametrize("configuration", CONFIGURATIONS)
def test_dtc_trains_and_predicts(dtc_trained, configuration: str, tmp_path: Path) -> None:
    """A DTC checkpoint (nnU-Net's PlainConvUNet with wrapped transposed convs plus the deformable path),
    validation, and segmentations of the held-out cases."""
    folders, dataset = dtc_trained
    fold = model_folder(folders, configuration, DTC_TRAINER) / "fold_0"
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == DTC_TRAINER
    weights = checkpoint["network_weights"]
    n_upsamplings = len(checkpoint["init_args"]["plans"]["configurations"][configuration]["architecture"]
                        ["arch_kwargs"]["strides"]) - 1
    for suffix in ("upsampling.weight", "features.weight", "coordinates.weight", "coordinates.bias"):
        assert sum(key.startswith("decoder.transpconvs.") and key.endswith(suffix) for key in weights) == n_upsamplings
    # training moved the zero-initialised coordinate branch (the deformable path learns)
    assert any(value.abs().max() > 0 for key, value in weights.items() if key.endswith("coordinates.weight"))
    assert (fold / "validation" / "summary.json").is_file()

    output = tmp_path / "prediction"
    predict_and_check_held_out_cases(folders, dataset, configuration, DTC_TRAINER, output)


def test_dtc_offsets_draws_the_trained_2d_model(dtc_trained, tmp_path: Path) -> None:
    folders, dataset = dtc_trained
    case = dataset.test_cases[0]
    output = tmp_path / "offsets"
    printed = run(["nnunet-deconver", "dtc-offsets", "-m", str(model_folder(folders, "2d", DTC_TRAINER)),
                   "-i", str(dataset.images_ts / f"{case}_0000.nii.gz"), "-o", str(output)], folders)
    figure = output / "dtc_sampling_offsets.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {figure}" in printed


def test_find_best_configuration_ranks_the_dtc_models(dtc_trained) -> None:
    """Cross-validation results of both DTC configurations feed nnU-Net's model selection and ensembling."""
    folders, _ = dtc_trained
    run(["nnUNetv2_find_best_configuration", str(DATASET_ID), "-c", *CONFIGURATIONS, "-tr", DTC_TRAINER,
         "-f", "0", "-np", "1"], folders)
    (dataset_folder,) = folders.results.glob(f"Dataset{DATASET_ID}_*")
    assert DTC_TRAINER in (dataset_folder / "inference_information.json").read_text()
