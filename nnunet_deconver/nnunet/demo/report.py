"""The demo's Dice table: nnU-Net's evaluation summaries, one row per configuration and trainer."""

from __future__ import annotations

import json
from pathlib import Path

# (configuration, trainer) -> {class name: mean Dice over the test cases}
DiceResults = dict[tuple[str, str], dict[str, float]]


def dice_per_class(summary_file: Path, labels: dict[str, int]) -> dict[str, float]:
    """Mean Dice per foreground class from the summary.json of ``nnUNetv2_evaluate_folder``.

    Args:
        summary_file: the evaluator's output.
        labels: the dataset.json ``labels`` (class name -> label value); 0 is background and left out.
    """
    means = json.loads(summary_file.read_text())["mean"]
    return {name: means[str(value)]["Dice"] for name, value in labels.items() if value != 0}


def format_dice_table(results: DiceResults) -> str:
    """A plain-text table: one row per (configuration, trainer), one column per class plus their mean.

    Rows keep the order of ``results``; every entry must have the same classes.
    """
    classes = list(next(iter(results.values())))
    header = ["configuration", "trainer", *classes, "mean"]
    rows = [[configuration, trainer, *(f"{dice[c]:.4f}" for c in classes), f"{sum(dice.values()) / len(dice):.4f}"]
            for (configuration, trainer), dice in results.items()]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
