"""The robustness report (SUM paper, Table 2): its results, the printed table, JSON, CSV and the plot.

``nnunet-deconver robustness`` (:mod:`nnunet_deconver.analysis.robustness`) fills a :class:`RobustnessReport`
with one :class:`StepResult` per trainer and corruption; :func:`write_report` writes ``robustness.json``,
``robustness.csv`` and ``robustness.png``.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from batchgenerators.utilities.file_and_folder_operations import save_json
from matplotlib.figure import Figure

REPORT_FILES = ("robustness.json", "robustness.csv", "robustness.png")
MEAN_COLUMN = "mean"  # the class column of the mean over the foreground classes


@dataclass(frozen=True)
class StepResult:
    """The Dice of one trainer under one corruption: per class (name -> mean over cases) and their mean."""

    trainer: str
    corruption: str
    dice: dict[str, float]
    mean_dice: float


@dataclass(frozen=True)
class RobustnessReport:
    """Every step's result and the settings that produced them."""

    dataset: str
    configuration: str
    fold: str
    plans: str
    checkpoint: str
    seed: int
    cases: tuple[str, ...]
    labels: str
    corruptions: dict[str, str]  # name -> description
    classes: tuple[str, ...]
    results: tuple[StepResult, ...]


def n_cases(count: int) -> str:
    return f"{count} case{'s' * (count != 1)}"


def format_table(report: RobustnessReport) -> str:
    """The trainer x corruption table: Dice per class and the mean over the foreground classes."""
    header = ["trainer", "corruption", *report.classes, MEAN_COLUMN]
    rows = [[r.trainer, r.corruption, *(f"{r.dice[name]:.3f}" for name in report.classes), f"{r.mean_dice:.3f}"]
            for r in report.results]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [(f"Dice on {n_cases(len(report.cases))} ({report.dataset}, {report.configuration}, fold "
              f"{report.fold}), mean over cases; '{MEAN_COLUMN}' over the foreground classes")]
    for row in [header, *rows]:
        cells = [cell.ljust(width) if column < 2 else cell.rjust(width)  # names left, numbers right
                 for column, (cell, width) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def csv_rows(report: RobustnessReport) -> list[dict[str, str | float]]:
    """One row per trainer, corruption and class, the mean over the foreground classes as class 'mean'."""
    return [{"trainer": r.trainer, "corruption": r.corruption, "class": name, "dice": value}
            for r in report.results for name, value in [*r.dice.items(), (MEAN_COLUMN, r.mean_dice)]]


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def report_json(report: RobustnessReport) -> dict:
    """The report as strict JSON (NaN Dice, where no case has the class nor predicts it, becomes null)."""
    settings = {key: value for key, value in vars(report).items() if key != "results"}
    results = [{"trainer": r.trainer, "corruption": r.corruption,
                "dice": {name: _finite_or_none(value) for name, value in r.dice.items()},
                "mean_dice": _finite_or_none(r.mean_dice),
                "summary": f"{r.trainer}/{r.corruption}/summary.json"} for r in report.results]
    return {**settings, "cases": list(report.cases), "classes": list(report.classes), "results": results}


def plot_mean_dice(report: RobustnessReport, path: Path) -> None:
    """Mean foreground Dice against the corruption, one line with markers per trainer."""
    corruptions = list(report.corruptions)
    figure = Figure(figsize=(1.3 * len(corruptions) + 3.0, 3.8))
    axes = figure.add_subplot()
    for trainer in dict.fromkeys(r.trainer for r in report.results):
        by_corruption = {r.corruption: r.mean_dice for r in report.results if r.trainer == trainer}
        axes.plot(range(len(corruptions)), [by_corruption[name] for name in corruptions], marker="o", label=trainer)
    axes.set_xticks(range(len(corruptions)), corruptions)
    axes.set_ylim(0, 1)
    axes.set_ylabel("mean Dice (foreground classes)")
    axes.set_title(f"{report.dataset} {report.configuration} fold {report.fold}: {n_cases(len(report.cases))}")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def write_report(report: RobustnessReport, output: Path) -> list[Path]:
    """Write robustness.json, .csv and .png into ``output``; return their paths."""
    json_path, csv_path, png_path = (output / name for name in REPORT_FILES)
    output.mkdir(parents=True, exist_ok=True)
    save_json(report_json(report), str(json_path), sort_keys=False)
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["trainer", "corruption", "class", "dice"])
        writer.writeheader()
        writer.writerows(csv_rows(report))
    plot_mean_dice(report, png_path)
    return [json_path, csv_path, png_path]
