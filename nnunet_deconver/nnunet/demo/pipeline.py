"""The end-to-end demo: MNI152 tissue dataset -> plan/preprocess -> train -> predict -> evaluate, per trainer.

Every step is the ordinary nnU-Net console command, run in a subprocess exactly as a user would
type it; the trainers are found through this package's installed discovery hook. By default
Deconver is compared with nnU-Net's own U-Net, both on the same short schedule.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from nnunet_deconver.nnunet.demo.defaults import DEMO_CONFIGURATIONS, DEMO_TRAINERS
from nnunet_deconver.nnunet.demo.figure import comparison_panels, save_comparison_figure
from nnunet_deconver.nnunet.demo.mni152_dataset import FILE_ENDING, MNI152Dataset, write_mni152_dataset
from nnunet_deconver.nnunet.demo.nnunet_commands import NnUNetFolders, StageRunner, console_script
from nnunet_deconver.nnunet.demo.report import DiceResults, dice_per_class, format_dice_table

FIGURE_NAME = "held_out_case.png"


@dataclass(frozen=True)
class DemoSettings:
    """What the demo runs; the defaults finish in minutes on 2 CPU cores.

    Raises:
        ValueError: if no trainer or configuration is given, or one is given twice.
    """

    workdir: Path
    configurations: tuple[str, ...] = DEMO_CONFIGURATIONS
    trainers: tuple[str, ...] = DEMO_TRAINERS
    dataset_id: int = 990
    fold: str = "0"
    device: str = "cpu"

    def __post_init__(self) -> None:
        for option, values in (("trainers", self.trainers), ("configurations", self.configurations)):
            if not values or len(set(values)) != len(values):
                raise ValueError(f"Give each of the demo's {option} once (got {list(values)}).")


@dataclass(frozen=True)
class DemoResult:
    """The test-set Dice of every (configuration, trainer) and the picture of one held-out case."""

    dice: DiceResults
    figure: Path


def run_demo(settings: DemoSettings) -> DemoResult:
    """Run the whole demo, print the Dice table and the figure's path, and return both.

    Raises:
        FileExistsError: if ``settings.workdir`` already exists (nothing is ever overwritten).
        CommandFailed: if an nnU-Net command fails (the message names its log file).
    """
    workdir = settings.workdir.resolve()
    if workdir.exists():
        raise FileExistsError(
            f"The demo folder {workdir} exists already; delete it or pass another --workdir."
        )
    folders = NnUNetFolders.inside(workdir)
    runs = [(configuration, trainer) for configuration in settings.configurations for trainer in settings.trainers]
    runner = StageRunner(3 + 3 * len(runs), folders, workdir / "logs")

    started = runner.announce("building the MNI152 tissue dataset from nilearn's template")
    dataset = write_mni152_dataset(folders.raw, dataset_id=settings.dataset_id)
    print(f"      {dataset.folder}: {len(dataset.training_cases)} training, {len(dataset.test_cases)} test cases")
    runner.finish(started)

    dataset_id = str(settings.dataset_id)
    runner.run("planning and preprocessing", [
        console_script("nnUNetv2_plan_and_preprocess"), "-d", dataset_id, "-c", *settings.configurations,
        "--verify_dataset_integrity", "-np", "1", "-npfp", "1",
    ])
    labels = json.loads((dataset.folder / "dataset.json").read_text())["labels"]
    prediction_folders = {run: workdir / "predictions" / run[1] / run[0] for run in runs}
    dice: DiceResults = {}
    for (configuration, trainer), prediction_folder in prediction_folders.items():
        _train_predict_evaluate(runner, settings, dataset, configuration, trainer, prediction_folder)
        dice[configuration, trainer] = dice_per_class(prediction_folder / "summary.json", labels)

    figure = workdir / FIGURE_NAME
    started = runner.announce(f"drawing held-out case {dataset.test_cases[0]} with every prediction")
    _draw_held_out_case(dataset, labels, prediction_folders, figure)
    runner.finish(started)

    print(f"\nTest-set Dice ({len(dataset.test_cases)} held-out cases, fold {settings.fold}):\n"
          f"{format_dice_table(dice)}\n\nHeld-out case {dataset.test_cases[0]}: {figure}")
    return DemoResult(dice, figure)


def _train_predict_evaluate(runner: StageRunner, settings: DemoSettings, dataset: MNI152Dataset, configuration: str,
                            trainer: str, prediction_folder: Path) -> None:
    """nnUNetv2_train, nnUNetv2_predict on the test images and nnUNetv2_evaluate_folder, as three stages."""
    dataset_id = str(settings.dataset_id)
    runner.run(f"training {trainer} {configuration}", [
        console_script("nnUNetv2_train"), dataset_id, configuration, settings.fold, "-tr", trainer,
        "-device", settings.device,
    ])
    runner.run(f"predicting the test cases with {trainer} {configuration}", [
        console_script("nnUNetv2_predict"), "-i", str(dataset.images_ts), "-o", str(prediction_folder),
        "-d", dataset_id, "-c", configuration, "-f", settings.fold, "-tr", trainer,
        "-device", settings.device, "-npp", "1", "-nps", "1",
    ])
    runner.run(f"evaluating {trainer} {configuration}", [
        console_script("nnUNetv2_evaluate_folder"), str(dataset.labels_ts), str(prediction_folder),
        "-djfile", str(prediction_folder / "dataset.json"), "-pfile", str(prediction_folder / "plans.json"),
        "-o", str(prediction_folder / "summary.json"), "-np", "1",
    ])


def _draw_held_out_case(dataset: MNI152Dataset, labels: dict[str, int],
                        prediction_folders: dict[tuple[str, str], Path], figure: Path) -> None:
    """The figure of the first test case: its image, label and every (configuration, trainer) prediction."""
    case = dataset.test_cases[0]
    predictions = {run: folder / f"{case}{FILE_ENDING}" for run, folder in prediction_folders.items()}
    image_file = dataset.images_ts / f"{case}_0000{FILE_ENDING}"
    panels = comparison_panels(image_file, dataset.labels_ts / f"{case}{FILE_ENDING}", predictions)
    save_comparison_figure(panels, labels, f"held-out case {case}, middle axial slice", figure)
