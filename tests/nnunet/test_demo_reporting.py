"""The demo's console output and figure: condensed epoch lines, the Dice table of several trainers, the PNG of
a held-out case, refusal to reuse a folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from matplotlib.image import imread

from nnunet_deconver.nnunet.demo.figure import comparison_panels, save_comparison_figure
from nnunet_deconver.nnunet.demo.nnunet_commands import EpochProgress
from nnunet_deconver.nnunet.demo.pipeline import DemoSettings
from nnunet_deconver.nnunet.demo.report import dice_per_class, format_dice_table

LABELS = {"background": 0, "grey_matter": 1, "white_matter": 2}
CASE_SHAPE = (6, 5, 4)  # x, y, z

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


def write_summary(path: Path, grey_matter: float, white_matter: float) -> Path:
    """A summary.json as nnUNetv2_evaluate_folder writes it (the parts the demo reads, plus background noise)."""
    path.write_text(json.dumps({"foreground_mean": {"Dice": 0.0},
                                "mean": {"1": {"Dice": grey_matter, "IoU": 0.0}, "2": {"Dice": white_matter}}}))
    return path


def test_dice_table_has_one_row_per_configuration_and_trainer(tmp_path: Path) -> None:
    runs = {("2d", "nnUNetTrainerDeconver_demo"): (0.5, 0.75), ("2d", "nnUNetTrainer_demo"): (0.875, 0.625),
            ("3d_fullres", "nnUNetTrainerDeconver_demo"): (0.25, 0.25),
            ("3d_fullres", "nnUNetTrainer_demo"): (1.0, 0.0)}
    dice = {run: dice_per_class(write_summary(tmp_path / f"{run[0]}_{run[1]}.json", *values), LABELS)
            for run, values in runs.items()}
    assert dice["2d", "nnUNetTrainer_demo"] == {"grey_matter": 0.875, "white_matter": 0.625}
    header, rule, *rows = format_dice_table(dice).splitlines()
    assert header.split() == ["configuration", "trainer", "grey_matter", "white_matter", "mean"]
    assert set(rule) == {"-", " "} and len(rule) == len(max(rows, key=len))
    assert [row.split() for row in rows] == [
        ["2d", "nnUNetTrainerDeconver_demo", "0.5000", "0.7500", "0.6250"],
        ["2d", "nnUNetTrainer_demo", "0.8750", "0.6250", "0.7500"],
        ["3d_fullres", "nnUNetTrainerDeconver_demo", "0.2500", "0.2500", "0.2500"],
        ["3d_fullres", "nnUNetTrainer_demo", "1.0000", "0.0000", "0.5000"],
    ]
    columns = [header.index(name) for name in ("trainer", "grey_matter", "mean")]
    assert all(row[c - 1] == " " and row[c] != " " for row in rows for c in columns)  # cells line up


def save_volume(array: np.ndarray, path: Path) -> Path:
    nib.save(nib.Nifti1Image(array, np.eye(4)), path)
    return path


@pytest.fixture()
def held_out_case(tmp_path: Path) -> tuple[Path, Path, dict[tuple[str, str], Path]]:
    """An image, its label and four different predictions of it, each slice z holding distinct values."""
    rng = np.random.default_rng(0)
    image = save_volume(rng.random(CASE_SHAPE).astype(np.float32), tmp_path / "case_0000.nii.gz")
    label = save_volume(rng.integers(0, 3, CASE_SHAPE).astype(np.uint8), tmp_path / "label.nii.gz")
    predictions = {}
    for configuration in ("2d", "3d_fullres"):
        for trainer in ("nnUNetTrainerDeconver_demo", "nnUNetTrainer_demo"):
            segmentation = rng.integers(0, 3, CASE_SHAPE).astype(np.uint8)
            path = tmp_path / f"{configuration}_{trainer}.nii.gz"
            predictions[configuration, trainer] = save_volume(segmentation, path)
    return image, label, predictions


def middle_slice_upright(path: Path) -> np.ndarray:
    """Slice z = 2 of a (6, 5, 4) volume with x to the right and y up: row r is y = 4 - r, column c is x = c."""
    volume = np.asarray(nib.load(path).dataobj)
    return volume[:, ::-1, 2].T


def test_figure_panels_hold_the_middle_slice_of_each_file(
        held_out_case: tuple[Path, Path, dict[tuple[str, str], Path]]) -> None:
    image, label, predictions = held_out_case
    panels = comparison_panels(image, label, predictions)
    assert list(panels) == ["2d", "3d_fullres"]
    for configuration, row in panels.items():
        assert [title for title, _ in row] == ["image", "reference label", "nnUNetTrainerDeconver_demo",
                                               "nnUNetTrainer_demo"]
        expected = [image, label, predictions[configuration, "nnUNetTrainerDeconver_demo"],
                    predictions[configuration, "nnUNetTrainer_demo"]]
        for (_, picture), source in zip(row, expected):
            np.testing.assert_array_equal(picture, middle_slice_upright(source))


def test_figure_is_written_as_a_png_with_every_panel(
        tmp_path: Path, held_out_case: tuple[Path, Path, dict[tuple[str, str], Path]]) -> None:
    image, label, predictions = held_out_case
    one_row = tmp_path / "one_row.png"
    save_comparison_figure(comparison_panels(image, label, {("2d", "A"): predictions["2d", "nnUNetTrainer_demo"]}),
                           LABELS, "held-out case", one_row)
    figure = tmp_path / "figure.png"
    save_comparison_figure(comparison_panels(image, label, predictions), LABELS, "held-out case", figure)
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels, small = imread(figure), imread(one_row)
    assert pixels.shape[0] > 1.5 * small.shape[0] and pixels.shape[1] > small.shape[1]  # 2 x 4 vs 1 x 3 panels
    label_colour = np.array([1.0, 0.498, 0.055])  # tab:orange, grey matter
    assert np.any(np.all(np.abs(pixels[..., :3] - label_colour) < 0.01, axis=-1))


def test_a_prediction_of_another_case_is_refused_with_a_clear_error(
        tmp_path: Path, held_out_case: tuple[Path, Path, dict[tuple[str, str], Path]]) -> None:
    image, label, _ = held_out_case
    other = save_volume(np.zeros((7, 5, 4), dtype=np.uint8), tmp_path / "other_case.nii.gz")
    with pytest.raises(ValueError, match="other_case.nii.gz.*same case"):
        comparison_panels(image, label, {("2d", "nnUNetTrainer_demo"): other})


def test_settings_refuse_a_trainer_listed_twice() -> None:
    with pytest.raises(ValueError, match="trainers once"):
        DemoSettings(Path("unused"), trainers=("nnUNetTrainer_demo", "nnUNetTrainer_demo"))


def test_demo_refuses_an_existing_folder_and_leaves_it_alone(tmp_path: Path) -> None:
    keep = tmp_path / "my_results.txt"
    keep.write_text("precious")
    cli = Path(sys.executable).parent / "nnunet-deconver"
    result = subprocess.run([str(cli), "demo", "--workdir", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 1
    assert "exists already" in result.stderr and str(tmp_path) in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["my_results.txt"] and keep.read_text() == "precious"
