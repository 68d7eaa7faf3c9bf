"""``nnunet-deconver impulse`` on models trained by nnU-Net's own commands (2d, the tiny MNI152 dataset).

A SUM (``nnUNetTrainerSUM_smoke``) gets the exact impulse response of its encoder-decoder and the
signal-flow figure; nnU-Net's own U-Net (``nnUNetTrainer_smoke``) the linearisation of its logits around
the held-out image. The command runs in this process through its own parser (impulse_cli.py).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest

from nnunet_deconver.analysis.impulse_cli import add_impulse_parser, run_impulse
from support.integration import model_folder

pytestmark = pytest.mark.slow

TRAINERS = ("nnUNetTrainerSUM_smoke", "nnUNetTrainer_smoke")


def _impulse(*argv: str) -> None:
    parser = argparse.ArgumentParser(prog="nnunet-deconver")
    add_impulse_parser(parser.add_subparsers(dest="command"))
    run_impulse(parser.parse_args(["impulse", *argv]))


def _report(output: Path) -> dict:
    report = json.loads((output / "impulse.json").read_text())
    assert all(math.isfinite(value) for value in report["metrics"].values())
    assert (output / "impulse_response.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return report


def test_a_trained_sum_gets_its_exact_response(sum_family_trained, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    folders, dataset = sum_family_trained
    case = dataset.test_cases[0]
    _impulse("-m", str(model_folder(folders, "2d", TRAINERS[0])), "-o", str(tmp_path),
             "-i", str(dataset.images_ts / f"{case}_0000.nii.gz"), "-l", str(dataset.labels_ts / f"{case}.nii.gz"))
    report = _report(tmp_path)
    assert report["kind"] == "exact ED at alpha=0" and report["crop_size"] == [128, 128]
    assert report["network"] == "SUMNet" and all(r > 0 for r in report["receptive_field_radius"])
    assert (tmp_path / "signal_flow.png").is_file()
    assert f"wrote {tmp_path / 'signal_flow.png'}" in capsys.readouterr().out
    with pytest.raises(FileExistsError):
        _impulse("-m", str(model_folder(folders, "2d", TRAINERS[0])), "-o", str(tmp_path))


def test_nnunets_unet_gets_the_linearisation_of_its_logits(sum_family_trained, tmp_path: Path) -> None:
    folders, dataset = sum_family_trained
    case = dataset.test_cases[0]
    _impulse("-m", str(model_folder(folders, "2d", TRAINERS[1])), "-o", str(tmp_path),
             "-i", str(dataset.images_ts / f"{case}_0000.nii.gz"))
    report = _report(tmp_path)
    assert report["kind"] == f"linearisation of the logits around the image {case}_0000.nii.gz"
    assert report["network"] == "PlainConvUNet" and report["crop_size"] == report["patch_size"]
    assert not (tmp_path / "signal_flow.png").exists()
