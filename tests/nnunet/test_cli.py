"""The nnunet-deconver command as a user runs it: output on success, one-line errors on bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CLI = str(Path(sys.executable).parent / "nnunet-deconver")


def cli(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *arguments], capture_output=True, text=True)


def test_profile_prints_both_networks_for_a_paper_preset() -> None:
    result = cli("profile", "--preset", "deconver-isles22-k3", "--patch-size", "64", "64", "64", "--input-channels", "2")
    assert result.returncode == 0, result.stderr
    ours = next(line for line in result.stdout.splitlines() if line.startswith("| deconver-isles22-k3 "))
    baseline = next(line for line in result.stdout.splitlines() if line.startswith("| nnU-Net PlainConvUNet"))
    assert ours.split("|")[2].strip() == "10.48" and baseline.split("|")[2].strip() == "22.40"


def test_profile_and_plan_errors_are_one_line() -> None:
    result = cli("profile", "--preset", "deconver-3d-k3", "--patch-size", "64", "64", "64")
    assert result.returncode == 2 and "nnU-Net's planned topology" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = cli("profile", "--preset", "deconver-isles22-k3", "--patch-size", "64", "64")
    assert result.returncode == 2 and "is 3D but the patch size (64, 64)" in result.stderr
    result = cli("plan", "-d", "999", "--preset", "deconver-2d-k9")
    assert result.returncode == 2 and "Unknown preset 'deconver-2d-k9'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_presets_lists_the_shipped_presets() -> None:
    result = cli("presets")
    assert result.returncode == 0
    names = [line.split()[0] for line in result.stdout.splitlines()]
    assert "deconver-isles22-k3" in names and "deconver-glas-k5" in names
