"""The README's end-to-end command (``nnunet-deconver demo``), with the smoke schedule and 2d only."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_demo_runs_every_stage_and_prints_the_dice_table(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    cli = Path(sys.executable).parent / "nnunet-deconver"
    result = subprocess.run(
        [str(cli), "demo", "--workdir", str(workdir), "-c", "2d", "-tr", "nnUNetTrainerDeconver_smoke", "-d", "992"],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert [line.split("]")[0] for line in lines if line.startswith("[")] == [f"[{i}/5" for i in range(1, 6)]
    assert sum(line.strip().startswith("epoch ") for line in lines) == 2  # the smoke schedule's 2 epochs
    summary = json.loads((workdir / "predictions" / "2d" / "summary.json").read_text())
    row = next(line for line in lines if line.startswith("2d "))
    assert row.split()[1:3] == [f"{summary['mean'][label]['Dice']:.4f}" for label in ("1", "2")]
