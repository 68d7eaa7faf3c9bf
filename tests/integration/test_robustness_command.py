"""``nnunet-deconver robustness`` end to end on the tiny MNI152 dataset: nnU-Net's own commands plan and train
``nnUNetTrainer_smoke`` (2d, fold 0) in subprocesses; the report then runs in this process through the
subcommand's parser, with two corruptions on the fold's validation cases."""

from __future__ import annotations

import argparse
import json

import pytest

from nnunet_deconver.analysis.robustness_cli import add_robustness_parser, run_robustness
from nnunet_deconver.nnunet.demo.mni152_dataset import MNI152Dataset
from nnunet_deconver.nnunet.demo.nnunet_commands import NnUNetFolders
from support.integration import DATASET_ID, model_folder

pytestmark = pytest.mark.slow

TRAINER = "nnUNetTrainer_smoke"


def robustness_arguments(*arguments: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nnunet-deconver")
    add_robustness_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["robustness", *arguments])


def test_robustness_report_of_a_trained_model(sum_family_trained: tuple[NnUNetFolders, MNI152Dataset],
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture) -> None:
    trained_2d, _ = sum_family_trained
    for variable, folder in (("nnUNet_raw", trained_2d.raw), ("nnUNet_preprocessed", trained_2d.preprocessed),
                             ("nnUNet_results", trained_2d.results)):
        monkeypatch.setenv(variable, str(folder))
    args = robustness_arguments("-d", str(DATASET_ID), "-c", "2d", "-f", "0", "-tr", TRAINER,
                                "--corruptions", "clean", "noise_10pct", "-np", "1")
    run_robustness(args)
    printed = capsys.readouterr().out.splitlines()

    fold = model_folder(trained_2d, "2d", TRAINER) / "fold_0"
    (dataset_name,) = (path.name for path in trained_2d.results.glob(f"Dataset{DATASET_ID}_*"))
    splits = json.loads((trained_2d.preprocessed / dataset_name / "splits_final.json").read_text())
    cases = splits[0]["val"]
    output = trained_2d.results / dataset_name / "robustness_nnUNetPlans_2d_fold0"
    assert printed[0].startswith(f"[1/2] {TRAINER} · clean: {len(cases)} cases … mean Dice ")
    assert printed[1].startswith(f"[2/2] {TRAINER} · noise_10pct: {len(cases)} cases … mean Dice ")
    assert printed[3].split() == ["trainer", "corruption", "grey_matter", "white_matter", "mean"]
    assert [line.split()[:2] for line in printed[4:6]] == [[TRAINER, "clean"], [TRAINER, "noise_10pct"]]
    assert printed[6:] == [f"wrote {output / name}" for name in ("robustness.json", "robustness.csv", "robustness.png")]

    report = json.loads((output / "robustness.json").read_text())
    assert report["cases"] == cases and list(report["corruptions"]) == ["clean", "noise_10pct"]
    assert "10 % of each channel's intensity range" in report["corruptions"]["noise_10pct"]
    for result in report["results"]:
        assert all(0 <= value <= 1 for value in [*result["dice"].values(), result["mean_dice"]])
        folder = output / TRAINER / result["corruption"]
        assert sorted(path.name for path in folder.glob("*.nii.gz")) == sorted(f"{case}.nii.gz" for case in cases)
        assert (folder / "summary.json").is_file()
    # clean images through nnU-Net's predictor give the fold's own validation result
    validation = json.loads((fold / "validation" / "summary.json").read_text())
    assert report["results"][0]["mean_dice"] == pytest.approx(validation["foreground_mean"]["Dice"], abs=1e-6)
    assert len((output / "robustness.csv").read_text().splitlines()) == 1 + 2 * 3
    assert (output / "robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    with pytest.raises(FileExistsError, match=r"robustness\.json exists already; .* pass another -o"):
        run_robustness(args)
