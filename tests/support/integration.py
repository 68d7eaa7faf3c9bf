"""The integration tier's shared pieces: the tiny MNI152 dataset's id and configurations, nnU-Net commands."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from nnunet_deconver.nnunet.demo.mni152_dataset import MNI152Dataset
from nnunet_deconver.nnunet.demo.nnunet_commands import NnUNetFolders
from support.processes import run_console_script

DATASET_ID = 991
CONFIGURATIONS = ("2d", "3d_fullres")
TRAINER = "nnUNetTrainerDeconver_smoke"
# What the session fixture sum_family_trained (tests/integration/conftest.py) trains: (trainer, configuration).
SUM_FAMILY_RUNS = (("nnUNetTrainerSUM_smoke", "2d"), ("nnUNetTrainerSUM_smoke", "3d_fullres"),
                   ("nnUNetTrainerSUMRec_smoke", "2d"), ("nnUNetTrainerSUM_paper_smoke", "2d"),
                   ("nnUNetTrainer_smoke", "2d"))


def run(command: list[str], folders: NnUNetFolders) -> str:
    """Run an nnU-Net (or nnunet-deconver) console script with the folders' nnU-Net environment."""
    return run_console_script(command, folders.environment())


def model_folder(folders: NnUNetFolders, configuration: str, trainer: str = TRAINER) -> Path:
    (dataset_folder,) = folders.results.glob(f"Dataset{DATASET_ID}_*")
    return dataset_folder / f"{trainer}__nnUNetPlans__{configuration}"


def predict_and_check_held_out_cases(folders: NnUNetFolders, dataset: MNI152Dataset, configuration: str,
                                     trainer: str, output: Path) -> None:
    """``nnUNetv2_predict`` fold 0 on the test images; each segmentation has the label's shape and labels."""
    run(["nnUNetv2_predict", "-i", str(dataset.images_ts), "-o", str(output), "-d", str(DATASET_ID),
         "-c", configuration, "-f", "0", "-tr", trainer, "-device", "cpu", "-npp", "1", "-nps", "1"], folders)
    for case in dataset.test_cases:
        predicted = np.asarray(nib.load(output / f"{case}.nii.gz").dataobj)
        reference = np.asarray(nib.load(dataset.labels_ts / f"{case}.nii.gz").dataobj)
        assert predicted.shape == reference.shape
        assert set(np.unique(predicted)) <= {0, 1, 2}
