"""The end-to-end demo: MNI152 tissue dataset -> plan/preprocess -> train -> predict -> evaluate.

Every step is the ordinary nnU-Net console command, run in a subprocess exactly as a user would
type it; the trainer is found through this package's installed discovery hook.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from nnunet_deconver.demo.mni152_dataset import write_mni152_dataset
from nnunet_deconver.demo.nnunet_commands import NnUNetFolders, StageRunner, console_script


@dataclass(frozen=True)
class DemoSettings:
    """What the demo runs; the defaults finish in minutes on 2 CPU cores."""

    workdir: Path
    configurations: tuple[str, ...] = ("2d", "3d_fullres")
    trainer: str = "nnUNetTrainerDeconver_demo"
    dataset_id: int = 990
    fold: str = "0"
    device: str = "cpu"


def _dice_per_class(summary_file: Path, labels: dict[str, int]) -> dict[str, float]:
    """Mean Dice per foreground class from nnU-Net's evaluation summary.json."""
    means = json.loads(summary_file.read_text())["mean"]
    return {name: means[str(value)]["Dice"] for name, value in labels.items() if value != 0}


def format_dice_table(results: dict[str, dict[str, float]]) -> str:
    """A plain-text table: one row per configuration, one column per class plus their mean."""
    classes = list(next(iter(results.values())))
    header = ["configuration", *classes, "mean"]
    rows = [[config, *(f"{dice[c]:.4f}" for c in classes), f"{sum(dice.values()) / len(dice):.4f}"]
            for config, dice in results.items()]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def run_demo(settings: DemoSettings) -> dict[str, dict[str, float]]:
    """Run the whole demo and return the test-set Dice per class for every configuration.

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
    runner = StageRunner(2 + 3 * len(settings.configurations), folders, workdir / "logs")

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
    results: dict[str, dict[str, float]] = {}
    for configuration in settings.configurations:
        prediction_folder = workdir / "predictions" / configuration
        runner.run(f"training {configuration}", [
            console_script("nnUNetv2_train"), dataset_id, configuration, settings.fold, "-tr", settings.trainer,
            "-device", settings.device,
        ])
        runner.run(f"predicting the test cases with {configuration}", [
            console_script("nnUNetv2_predict"), "-i", str(dataset.images_ts), "-o", str(prediction_folder),
            "-d", dataset_id, "-c", configuration, "-f", settings.fold, "-tr", settings.trainer,
            "-device", settings.device, "-npp", "1", "-nps", "1",
        ])
        summary_file = prediction_folder / "summary.json"
        runner.run(f"evaluating {configuration}", [
            console_script("nnUNetv2_evaluate_folder"), str(dataset.labels_ts), str(prediction_folder),
            "-djfile", str(prediction_folder / "dataset.json"), "-pfile", str(prediction_folder / "plans.json"),
            "-o", str(summary_file), "-np", "1",
        ])
        results[configuration] = _dice_per_class(summary_file, labels)
    print(f"\nTest-set Dice ({settings.trainer}, fold {settings.fold}):\n{format_dice_table(results)}")
    return results
