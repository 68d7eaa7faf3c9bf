"""The nnunet-deconver command as a user runs it: output on success, one-line errors on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from support.plans import nnunet_plans

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


def test_profile_at_the_reference_plans_reports_the_training_step_next_to_nnunet() -> None:
    """DTC on PlainConvUNet with its upsamplers checkpointed saves exactly what nnU-Net's network saves."""
    result = cli("profile", "-tr", "nnUNetTrainerDTC", "--reference-plans", "3d_fullres")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "input (batch, channels, *patch) = (2, 1, 128, 128, 128)" in lines
    ours = [line for line in lines if line.startswith("| nnUNetTrainerDTC, nnUNetPlans 3d_fullres")][-1].split("|")
    baseline = [line for line in lines if line.startswith("| PlainConvUNet (nnUNetTrainer)")][-1].split("|")
    assert baseline[2].strip() == "6.65 (1.00x)"  # nnU-Net's saved activations at 128^3, batch 2, float32
    assert ours[2].strip().endswith("(1.00x)") and ours[3].strip().endswith("(1.00x)")
    assert int(ours[6].split()[0]) > int(baseline[6].split()[0])  # DTC launches more kernels
    result = cli("profile", "-tr", "nnUNetTrainerDTC", "--reference-plans", "3d_fullres", "--device", "cpu")
    assert result.returncode == 2 and "needs a CUDA device" in result.stderr


def test_plan_with_a_gpu_memory_target_writes_replanned_plans_once(tmp_path: Path) -> None:
    folder = tmp_path / "Dataset999_Toy"
    folder.mkdir()
    plans = nnunet_plans()
    plans["configurations"]["3d_fullres"].update(spacing=[1.0, 1.0, 1.0], median_image_size_in_voxels=[32, 48, 40])
    (folder / "nnUNetPlans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(
        {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "tissue": 1}, "numTraining": 20,
         "file_ending": ".nii.gz"}))
    environment = {"nnUNet_preprocessed": str(tmp_path)}
    arguments = ("plan", "-d", "Dataset999_Toy", "--preset", "deconver-3d-k3", "--gpu-memory-target", "0.2")
    result = cli_with_environment(environment, *arguments)
    assert result.returncode == 0, result.stderr
    written = folder / "nnUNetDeconverPlans_0.2GB.json"
    assert f"wrote {written}" in result.stdout and "estimated peak" in result.stdout
    derived = json.loads(written.read_text())
    configuration = derived["configurations"]["3d_fullres"]
    assert derived["nnunet_deconver"]["gpu_memory_target_gib"] == 0.2
    assert all(p <= m for p, m in zip(configuration["patch_size"], [32, 48, 40])) and configuration["batch_size"] >= 2
    again = cli_with_environment(environment, *arguments)
    assert again.returncode == 2 and "exists" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    bad = cli_with_environment(environment, *arguments[:-1], "-1", "-o", "Other")
    assert bad.returncode == 2 and "positive number of GiB" in bad.stderr and not (folder / "Other.json").exists()


def cli_with_environment(environment: dict[str, str], *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *arguments], capture_output=True, text=True, env={**os.environ, **environment})
