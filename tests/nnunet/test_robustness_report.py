"""``nnunet-deconver robustness`` without training: the report from nnU-Net-shaped summaries, and the checks of a
request against a fabricated nnU-Net folder tree (one-line errors before anything is written)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
from batchgenerators.utilities.file_and_folder_operations import save_json
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_deconver.analysis.corruptions import CORRUPTION_NAMES
from nnunet_deconver.analysis.robustness import (
    RobustnessRequest,
    blur_axes,
    class_names,
    prepare_run,
    run_robustness_report,
    step_result,
)
from nnunet_deconver.analysis.robustness_report import (
    RobustnessReport,
    csv_rows,
    format_table,
    report_json,
    write_report,
)
from nnunet_deconver.analysis.robustness_cli import add_robustness_parser, run_robustness
from support.plans import plans_configuration, predictor_plans

DATASET = "Dataset999_Toy"
TRAINERS = ("nnUNetTrainer", "nnUNetTrainerSUM")
DATASET_JSON = {"channel_names": {"0": "T1"}, "labels": {"background": 0, "grey_matter": 1, "white_matter": 2},
                "numTraining": 4, "file_ending": ".nii.gz"}
CLASSES = {1: "grey_matter", 2: "white_matter"}


def summary(dice: dict[int, float]) -> dict:
    """The parts of compute_metrics_on_folder's result the report reads (its 'mean' is over cases)."""
    return {"mean": {label: {"Dice": value, "IoU": value / (2 - value)} for label, value in dice.items()},
            "foreground_mean": {"Dice": sum(dice.values()) / len(dice)}}


@pytest.fixture
def report() -> RobustnessReport:
    results = (
        step_result("nnUNetTrainer", "clean", summary({1: 0.9, 2: 0.8}), CLASSES),
        step_result("nnUNetTrainer", "noise_10pct", summary({1: 0.5, 2: float("nan")}), CLASSES),
        step_result("nnUNetTrainerSUM", "clean", summary({1: 0.85, 2: 0.75}), CLASSES),
        step_result("nnUNetTrainerSUM", "noise_10pct", summary({1: 0.8, 2: 0.7}), CLASSES),
    )
    return RobustnessReport(DATASET, "3d_fullres", "0", "nnUNetPlans", "checkpoint_final.pth", 0, ("a", "b"),
                            "/raw/labelsTr", {"clean": "no corruption", "noise_10pct": "noise"},
                            ("grey_matter", "white_matter"), results)


def test_step_result_reads_nnunets_class_means(report) -> None:
    clean = report.results[0]
    assert clean.dice == {"grey_matter": 0.9, "white_matter": 0.8}
    assert clean.mean_dice == pytest.approx(0.85)


def test_table_has_a_row_per_trainer_and_corruption(report) -> None:
    lines = format_table(report).splitlines()
    assert lines[0].startswith(f"Dice on 2 cases ({DATASET}, 3d_fullres, fold 0)")
    assert lines[1].split() == ["trainer", "corruption", "grey_matter", "white_matter", "mean"]
    assert lines[2].split() == ["nnUNetTrainer", "clean", "0.900", "0.800", "0.850"]
    assert lines[3].split() == ["nnUNetTrainer", "noise_10pct", "0.500", "nan", "nan"]
    assert lines[5].split() == ["nnUNetTrainerSUM", "noise_10pct", "0.800", "0.700", "0.750"]
    assert len(lines) == 6 and len({len(line) for line in lines[2:]}) == 1


def test_csv_rows_per_trainer_corruption_and_class(report) -> None:
    rows = csv_rows(report)
    assert len(rows) == 4 * 3
    assert rows[:3] == [
        {"trainer": "nnUNetTrainer", "corruption": "clean", "class": "grey_matter", "dice": 0.9},
        {"trainer": "nnUNetTrainer", "corruption": "clean", "class": "white_matter", "dice": 0.8},
        {"trainer": "nnUNetTrainer", "corruption": "clean", "class": "mean", "dice": pytest.approx(0.85)},
    ]


def test_json_is_strict_and_names_the_settings(report) -> None:
    document = report_json(report)
    assert json.loads(json.dumps(document, allow_nan=False)) == document
    assert document["dataset"] == DATASET and document["cases"] == ["a", "b"] and document["seed"] == 0
    assert document["corruptions"] == {"clean": "no corruption", "noise_10pct": "noise"}
    noisy = document["results"][1]
    assert noisy["dice"] == {"grey_matter": 0.5, "white_matter": None} and noisy["mean_dice"] is None
    assert noisy["summary"] == "nnUNetTrainer/noise_10pct/summary.json"


def test_write_report_writes_json_csv_and_png(report, tmp_path: Path) -> None:
    written = write_report(report, tmp_path / "out")
    assert [path.name for path in written] == ["robustness.json", "robustness.csv", "robustness.png"]
    assert json.loads(written[0].read_text())["results"][0]["mean_dice"] == pytest.approx(0.85)
    csv_lines = written[1].read_text().splitlines()
    assert csv_lines[0] == "trainer,corruption,class,dice" and len(csv_lines) == 13
    assert csv_lines[4] == "nnUNetTrainer,noise_10pct,grey_matter,0.5"
    assert math.isnan(float(csv_lines[5].split(",")[-1]))
    assert written[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_class_names_of_labels_and_regions() -> None:
    plans = PlansManager(predictor_plans(plans_configuration(3)))
    assert class_names(DATASET_JSON, plans) == CLASSES
    regions = {**DATASET_JSON, "labels": {"background": 0, "whole": [1, 2], "core": 2}, "regions_class_order": [1, 2]}
    assert class_names(regions, plans) == {(1, 2): "whole", 2: "core"}


@pytest.mark.parametrize("patch, transpose_forward, axes", [
    ([8, 16, 16], [0, 1, 2], (0, 1, 2)),
    ([8, 16, 16], [2, 0, 1], (0, 1, 2)),
    ([16, 24], [0, 1, 2], (1, 2)),
    ([16, 24], [2, 0, 1], (0, 1)),
], ids=["3d", "3d-transposed", "2d", "2d-transposed"])
def test_blur_axes_3d_everywhere_2d_in_the_slices_nnunet_sees(patch, transpose_forward, axes) -> None:
    plans = PlansManager({**predictor_plans(plans_configuration(3)), "transpose_forward": transpose_forward})
    configuration = plans.get_configuration("3d_fullres")
    configuration.configuration["patch_size"] = patch
    assert blur_axes(plans, configuration) == axes


# ------------------------------------------------------------------------ a fabricated nnU-Net folder tree


@pytest.fixture
def nnunet_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """nnU-Net's three folders: two trainers' 3d_fullres model folders (fold 0 checkpoint files), the split file
    (fold 0 validates cases c and d), and raw images and labels (empty files: only their names are read)."""
    for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (tmp_path / variable).mkdir()
        monkeypatch.setenv(variable, str(tmp_path / variable))
    plans = predictor_plans(plans_configuration(3), DATASET)
    plans["configurations"]["3d_cascade_fullres"] = {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}
    for trainer in TRAINERS:
        for configuration in ("3d_fullres", "3d_cascade_fullres"):
            folder = tmp_path / "nnUNet_results" / DATASET / f"{trainer}__nnUNetPlans__{configuration}"
            (folder / "fold_0").mkdir(parents=True)
            (folder / "fold_0" / "checkpoint_final.pth").touch()
            save_json(DATASET_JSON, str(folder / "dataset.json"))
            save_json(plans, str(folder / "plans.json"))
    (tmp_path / "nnUNet_preprocessed" / DATASET).mkdir()
    save_json([{"train": ["a", "b"], "val": ["c", "d"]}], str(tmp_path / "nnUNet_preprocessed" / DATASET /
                                                              "splits_final.json"))
    raw = tmp_path / "nnUNet_raw" / DATASET
    for folder in ("imagesTr", "labelsTr"):
        (raw / folder).mkdir(parents=True)
    for case in "abcd":
        (raw / "imagesTr" / f"{case}_0000.nii.gz").touch()
        (raw / "labelsTr" / f"{case}.nii.gz").touch()
    return tmp_path


def request(**changes) -> RobustnessRequest:
    return RobustnessRequest(**{"dataset": "999", "configuration": "3d_fullres", "trainers": TRAINERS, **changes})


def test_prepare_run_finds_the_folds_validation_cases(nnunet_tree: Path) -> None:
    run = prepare_run(request())
    assert run.dataset_name == DATASET and list(run.model_folders) == list(TRAINERS)
    raw = nnunet_tree / "nnUNet_raw" / DATASET
    assert run.cases.images == {case: [str(raw / "imagesTr" / f"{case}_0000.nii.gz")] for case in "cd"}
    assert run.cases.labels == raw / "labelsTr"
    assert [c.name for c in run.corruptions] == list(CORRUPTION_NAMES)
    assert run.output == nnunet_tree / "nnUNet_results" / DATASET / "robustness_nnUNetPlans_3d_fullres_fold0"
    assert run.blur_axes == (0, 1, 2) and run.classes == CLASSES
    assert not run.output.exists()


def test_prepare_run_takes_every_case_of_images_and_labels_folders(nnunet_tree: Path) -> None:
    raw = nnunet_tree / "nnUNet_raw" / DATASET
    run = prepare_run(request(images=raw / "imagesTr", labels=raw / "labelsTr", corruptions=("clean",)))
    assert list(run.cases.images) == ["a", "b", "c", "d"]


@pytest.mark.parametrize("changes, error, message", [
    ({"corruptions": ("clean", "fog")}, ValueError, "Unknown corruption 'fog'; choose from clean, blur_sigma1"),
    ({"images": Path("/somewhere")}, ValueError, "-i IMAGES and -l LABELS go together"),
    ({"dataset": "998"}, ValueError, "Unknown dataset '998'"),
    ({"fold": "x"}, ValueError, "Fold 'x' is neither a fold number nor 'all'"),
    ({"fold": "1"}, FileNotFoundError, ("fold_1/checkpoint_final.pth does not exist; train it with nnUNetv2_train "
                                        "Dataset999_Toy 3d_fullres 1 -tr nnUNetTrainer -p nnUNetPlans")),
    ({"trainers": ("nnUNetTrainerDeconver",)}, FileNotFoundError,
     "nnUNetTrainerDeconver__nnUNetPlans__3d_fullres does not exist; train it with nnUNetv2_train"),
    ({"checkpoint": "checkpoint_best.pth"}, FileNotFoundError, "fold_0/checkpoint_best.pth does not exist"),
    ({"configuration": "3d_cascade_fullres"}, ValueError, "is a cascade stage"),
], ids=["corruption", "i-without-l", "dataset", "fold-name", "fold-checkpoint", "model-folder", "checkpoint",
        "cascade"])
def test_bad_requests_are_one_line_errors(nnunet_tree: Path, changes, error, message) -> None:
    with pytest.raises(error) as raised:
        prepare_run(request(**changes))
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_fold_all_and_a_missing_split_file_point_to_i_and_l(nnunet_tree: Path) -> None:
    for trainer in TRAINERS:
        (nnunet_tree / "nnUNet_results" / DATASET / f"{trainer}__nnUNetPlans__3d_fullres" / "fold_all").mkdir()
        (nnunet_tree / "nnUNet_results" / DATASET / f"{trainer}__nnUNetPlans__3d_fullres" / "fold_all" /
         "checkpoint_final.pth").touch()
    with pytest.raises(ValueError, match=r"Fold 'all' .* has no validation cases; pass -i IMAGES -l LABELS"):
        prepare_run(request(fold="all"))
    (nnunet_tree / "nnUNet_preprocessed" / DATASET / "splits_final.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"splits_final.json does not exist \(nnUNetv2_train writes it\)"):
        prepare_run(request())


def test_missing_labels_and_channels_are_named(nnunet_tree: Path) -> None:
    raw = nnunet_tree / "nnUNet_raw" / DATASET
    (raw / "labelsTr" / "d.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"labelsTr holds no labels CASE.nii.gz for 1 case: d"):
        prepare_run(request())
    (raw / "imagesTr" / "c_0000.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"channel file\(s\) CASE_0000.nii.gz ... of 1 case: c"):
        prepare_run(request())


def test_an_earlier_report_is_refused_before_any_work(nnunet_tree: Path, tmp_path: Path) -> None:
    output = tmp_path / "report"
    output.mkdir()
    (output / "robustness.json").write_text("{}")
    with pytest.raises(FileExistsError) as raised:
        run_robustness_report(request(output=output))
    assert str(raised.value) == (f"{output / 'robustness.json'} exists already; an earlier robustness report is "
                                 f"never overwritten: pass another -o.")
    assert sorted(path.name for path in output.iterdir()) == ["robustness.json"]


def test_an_earlier_prediction_folder_is_refused(nnunet_tree: Path, tmp_path: Path) -> None:
    earlier = tmp_path / "report" / "nnUNetTrainerSUM" / "blur_sigma2"
    earlier.mkdir(parents=True)
    with pytest.raises(FileExistsError, match="blur_sigma2 exists already"):
        prepare_run(request(output=tmp_path / "report"))
    prepare_run(request(output=tmp_path / "report", corruptions=("clean", "blur_sigma1")))


def test_parser_and_run_robustness_report_errors(nnunet_tree: Path, capsys: pytest.CaptureFixture) -> None:
    parser = argparse.ArgumentParser(prog="nnunet-deconver")
    add_robustness_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["robustness", "-d", "999", "-c", "3d_fullres", "-tr", *TRAINERS])
    assert (args.fold, args.plans, args.checkpoint, args.device, args.seed) == ("0", "nnUNetPlans",
                                                                              "checkpoint_final.pth", "cpu", 0)
    assert args.corruptions == list(CORRUPTION_NAMES) and args.images is None and args.output is None
    args = parser.parse_args(["robustness", "-d", "999", "-c", "3d_fullres", "-tr", "nnUNetTrainer", "-l", "labels"])
    with pytest.raises(ValueError, match="-i IMAGES and -l LABELS go together"):
        run_robustness(args)
    assert capsys.readouterr().out == ""
