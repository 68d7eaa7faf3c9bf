"""SUM through nnU-Net's own console commands, in subprocesses, on the MNI152 dataset.

``nnUNetv2_train`` with the SUM smoke trainers (SUM_Seg in 2d and 3d_fullres, SUM_Rec and the paper recipe
in 2d) on nnU-Net's own plans, then ``nnUNetv2_predict`` with each.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from support.integration import SUM_FAMILY_RUNS, model_folder, predict_and_check_held_out_cases

pytestmark = pytest.mark.slow

RUNS = [run for run in SUM_FAMILY_RUNS if "SUM" in run[0]]


@pytest.mark.parametrize(("trainer", "configuration"), RUNS)
def test_sum_trains_validates_and_predicts(sum_family_trained, trainer: str, configuration: str,
                                          tmp_path: Path) -> None:
    folders, dataset = sum_family_trained
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
