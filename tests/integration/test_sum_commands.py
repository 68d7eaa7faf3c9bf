"""SUM through nnU-Net's own console commands, in subprocesses, on the MNI152 dataset.

``nnUNetv2_train`` with the SUM smoke trainers (SUM_Seg in 2d and 3d_fullres, SUM_Rec and the paper recipe
in 2d) on nnU-Net's own plans, then ``nnUNetv2_predict`` with each.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from nnunet_deconver.nnunet.demo.mni152_dataset import MNI152Dataset, write_mni152_dataset
from nnunet_deconver.nnunet.demo.nnunet_commands import NnUNetFolders
from support.integration import CONFIGURATIONS, DATASET_ID, model_folder, predict_and_check_held_out_cases, run

pytestmark = pytest.mark.slow

RUNS = [("nnUNetTrainerSUM_smoke", "2d"), ("nnUNetTrainerSUM_smoke", "3d_fullres"),
        ("nnUNetTrainerSUMRec_smoke", "2d"), ("nnUNetTrainerSUM_paper_smoke", "2d")]


@pytest.fixture(scope="module")
def sum_trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[NnUNetFolders, MNI152Dataset]:
    folders = NnUNetFolders.inside(tmp_path_factory.mktemp("nnunet_sum"))
    dataset = write_mni152_dataset(folders.raw, dataset_id=DATASET_ID, n_training=6, n_test=1)
    run(["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", *CONFIGURATIONS,
         "--verify_dataset_integrity", "-np", "1", "-npfp", "1"], folders)
    for trainer, configuration in RUNS:
        run(["nnUNetv2_train", str(DATASET_ID), configuration, "0", "-tr", trainer, "-device", "cpu"], folders)
    return folders, dataset


@pytest.mark.parametrize(("trainer", "configuration"), RUNS)
def test_sum_trains_validates_and_predicts(sum_trained, trainer: str, configuration: str, tmp_path: Path) -> None:
    folders, dataset = sum_trained
    fold = model_folder(folders, configuration, trainer) / "fold_0"
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == trainer
    weights = checkpoint["network_weights"]
    assert any(key.endswith("shrink1.threshold") for key in weights)
    # training moved the zero-initialised thresholds
    assert any(value.abs().max() > 0 for key, value in weights.items() if key.endswith("threshold"))
    paper = "_paper" in trainer
    assert any(key.startswith("decoder.heads.") for key in weights) is not paper
    assert (fold / "validation" / "summary.json").is_file()
    log = next(fold.glob("training_log_*.txt")).read_text()
    losses = [float(line.split("train_loss")[1]) for line in log.splitlines() if "train_loss" in line]
    assert len(losses) == 2 and np.isfinite(losses).all()

    output = tmp_path / "prediction"
    predict_and_check_held_out_cases(folders, dataset, configuration, trainer, output)
    if paper:  # horizontal flips only, at training and test time
        assert checkpoint["inference_allowed_mirroring_axes"] == (1,)
