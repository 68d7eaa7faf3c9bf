"""The README's end-to-end command (``nnunet-deconver demo``), with smoke schedules, two trainers and 2d only."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

TRAINERS = ("nnUNetTrainerDeconver_smoke", "nnUNetTrainer_smoke")


def test_demo_compares_the_trainers_in_one_table_and_draws_a_held_out_case(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    cli = Path(sys.executable).parent / "nnunet-deconver"
    result = subprocess.run(
        [str(cli), "demo", "--workdir", str(workdir), "-c", "2d", "-tr", *TRAINERS, "-d", "992"],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert [line.split("]")[0] for line in lines if line.startswith("[")] == [f"[{i}/9" for i in range(1, 10)]
    assert sum(line.strip().startswith("epoch ") for line in lines) == 2 * len(TRAINERS)  # 2 smoke epochs each
    for trainer in TRAINERS:
        summary = json.loads((workdir / "predictions" / trainer / "2d" / "summary.json").read_text())
        row = next(line for line in lines if line.split()[:2] == ["2d", trainer])
        assert row.split()[2:4] == [f"{summary['mean'][label]['Dice']:.4f}" for label in ("1", "2")]
    figure = workdir / "held_out_case.png"
    assert lines[-1].endswith(f": {figure}")
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
