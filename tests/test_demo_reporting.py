"""The demo's console output: condensed epoch lines, the Dice table, refusal to reuse a folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nnunet_deconver.demo.nnunet_commands import EpochProgress
from nnunet_deconver.demo.pipeline import _dice_per_class, format_dice_table

NNUNET_EPOCH_LOG = """\
2026-11-23 16:55:00.100000: Epoch 3
2026-11-23 16:55:00.200000: Current learning rate: 0.00973
2026-11-23 16:55:27.598000: train_loss -0.4238
2026-11-23 16:55:27.598500: val_loss -0.4829
2026-11-23 16:55:27.599132: Pseudo dice [np.float32(0.866), np.float32(0.9092)]
2026-11-23 16:55:27.599200: Epoch time: 25.39 s
2026-11-23 16:55:27.600000: Yayy! New best EMA pseudo Dice: 0.85
"""


def test_one_line_per_epoch_with_losses_and_dice(capsys: pytest.CaptureFixture[str]) -> None:
    progress = EpochProgress()
    for line in NNUNET_EPOCH_LOG.splitlines():
        progress.read(line)
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed == [
        "epoch 3: train loss -0.4238 | val loss -0.4829 | pseudo Dice 0.866 0.9092 | time 25.39 s"
    ]


def test_dice_table_reads_nnunet_summary(tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"mean": {"1": {"Dice": 0.5}, "2": {"Dice": 0.75}}}))
    dice = _dice_per_class(summary, {"background": 0, "grey_matter": 1, "white_matter": 2})
    assert dice == {"grey_matter": 0.5, "white_matter": 0.75}
    table = format_dice_table({"2d": dice, "3d_fullres": {"grey_matter": 0.25, "white_matter": 0.25}})
    header, rule, row_2d, row_3d = table.splitlines()
    assert header.split() == ["configuration", "grey_matter", "white_matter", "mean"]
    assert row_2d.split() == ["2d", "0.5000", "0.7500", "0.6250"]
    assert row_3d.split() == ["3d_fullres", "0.2500", "0.2500", "0.2500"]


def test_demo_refuses_an_existing_folder_and_leaves_it_alone(tmp_path: Path) -> None:
    keep = tmp_path / "my_results.txt"
    keep.write_text("precious")
    cli = Path(sys.executable).parent / "nnunet-deconver"
    result = subprocess.run([str(cli), "demo", "--workdir", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 1
    assert "exists already" in result.stderr and str(tmp_path) in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["my_results.txt"] and keep.read_text() == "precious"
