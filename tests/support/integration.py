"""The integration tier's shared pieces: the tiny MNI152 dataset's id and configurations, nnU-Net commands."""

from __future__ import annotations

from pathlib import Path

from nnunet_deconver.nnunet.demo.nnunet_commands import NnUNetFolders
from support.processes import run_console_script

DATASET_ID = 991
CONFIGURATIONS = ("2d", "3d_fullres")
TRAINER = "nnUNetTrainerDeconver_smoke"


def run(command: list[str], folders: NnUNetFolders) -> str:
    """Run an nnU-Net (or nnunet-deconver) console script with the folders' nnU-Net environment."""
    return run_console_script(command, folders.environment())


def model_folder(folders: NnUNetFolders, configuration: str, trainer: str = TRAINER) -> Path:
    (dataset_folder,) = folders.results.glob(f"Dataset{DATASET_ID}_*")
    return dataset_folder / f"{trainer}__nnUNetPlans__{configuration}"
