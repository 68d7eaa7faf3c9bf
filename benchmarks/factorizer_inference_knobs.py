"""Speed vs Dice of a trained Swin Factorizer under inference-time NMF settings (papers/factorizer.md 4.5).

Usage:

    python benchmarks/factorizer_inference_knobs.py [--workdir DIR] [-c 2d|3d_fullres] [--repeats 3]

If DIR holds no trained model, the demo pipeline first builds the MNI152 demo dataset and trains
``nnUNetTrainerFactorizerSwin_demo`` on it (``nnunet-deconver demo``, a few minutes on 2 cores). Then,
for every setting (T in {1, 2, 3, 5}, and short-circuiting NMF layers):

* Dice: ``nnunet-deconver predict`` with the setting on the test images, then
  ``nnUNetv2_evaluate_folder`` -- the commands a user types (a rerun reuses these results and only
  measures the time again);
* time: the sliding-window prediction of the preprocessed test images in this process (nnU-Net's
  ``predict_logits_from_preprocessed_data``, mirroring on, 2 threads), median of the repeats, and its
  ratio to the trained setting (T = 5) -- process start-up, preprocessing and export left out, as
  they do not depend on the setting;
* NMF share: the FLOPs of the NMF layers' matrix products over all FLOPs at the plans' patch size.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from nnunet_deconver.nnunet.demo.nnunet_commands import NnUNetFolders, StageRunner, console_script
from nnunet_deconver.nnunet.demo.pipeline import DemoSettings, run_demo
from nnunet_deconver.nnunet.inference_knobs import NMFInferenceSettings, apply_settings, factorizer_in
from nnunet_deconver.nnunet.trained_model import TrainedModel, load_trained_model, preprocess_image

TRAINER = "nnUNetTrainerFactorizerSwin_demo"
DATASET = "Dataset990_MNI152Tissue"


@dataclass(frozen=True)
class Setting:
    name: str
    settings: NMFInferenceSettings

    def arguments(self) -> list[str]:
        s = self.settings
        args = [] if s.iterations is None else ["--nmf-iters", str(s.iterations)]
        return args + (["--skip-nmf-layers", *map(str, s.skip_layers)] if s.skip_layers else [])


def settings_to_compare(n_layers: int) -> list[Setting]:
    decoder = tuple(range(n_layers // 2 + 2, n_layers + 1))
    return [
        *(Setting(f"T = {t}", NMFInferenceSettings(iterations=t)) for t in (5, 3, 2, 1)),
        Setting(f"decoder NMF off (layers {decoder[0]}-{decoder[-1]})", NMFInferenceSettings(skip_layers=decoder)),
        Setting(f"all NMF off (layers 1-{n_layers})", NMFInferenceSettings(skip_layers=tuple(range(1, n_layers + 1)))),
    ]


def predict_and_evaluate(runner: StageRunner, folders: NnUNetFolders, configuration: str, setting: Setting,
                         output: Path) -> dict[str, float]:
    images, labels = folders.raw / DATASET / "imagesTs", folders.raw / DATASET / "labelsTs"
    runner.run(f"predicting with {setting.name}", [
        console_script("nnunet-deconver"), "predict", "-i", str(images), "-o", str(output), "-d", "990",
        "-c", configuration, "-f", "0", "-tr", TRAINER, "-device", "cpu", "-npp", "1", "-nps", "1",
        *setting.arguments(),
    ])
    runner.run(f"evaluating {setting.name}", [
        console_script("nnUNetv2_evaluate_folder"), str(labels), str(output), "-djfile", str(output / "dataset.json"),
        "-pfile", str(output / "plans.json"), "-o", str(output / "summary.json"), "-np", "1",
    ])
    return dice_from_summary(output)


def dice_from_summary(output: Path) -> dict[str, float]:
    """Mean Dice per class from nnU-Net's evaluation of the predictions in ``output``."""
    means = json.loads((output / "summary.json").read_text())["mean"]
    names = {str(v): k for k, v in json.loads((output / "dataset.json").read_text())["labels"].items()}
    return {names[label]: values["Dice"] for label, values in means.items()}


def time_predictions(model: TrainedModel, images: list[list[Path]], settings: list[Setting],
                     repeats: int) -> dict[str, tuple[float, float]]:
    """(median seconds per test set, NMF share of FLOPs) per setting, measured in this process."""
    from torch.utils.flop_counter import FlopCounterMode

    cases = [torch.from_numpy(preprocess_image(model, files)) for files in images]
    trained_nmf = factorizer_in(model.network).nmf_layers()[0].nmf
    trained = NMFInferenceSettings(trained_nmf.iterations, trained_nmf.rank, trained_nmf.solver)
    results = {}
    for setting in settings:
        apply_settings(model.network, trained)
        apply_settings(model.network, setting.settings)
        durations = []
        for _ in range(repeats + 1):  # the first run warms up
            started = time.perf_counter()
            for case in cases:
                model.predictor.predict_logits_from_preprocessed_data(case)
            durations.append(time.perf_counter() - started)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model.network(torch.zeros(1, cases[0].shape[0], *model.configuration_manager.patch_size))
        nmf = sum(sum(ops.values()) for module, ops in counter.get_flop_counts().items() if module.endswith(".nmf"))
        results[setting.name] = (statistics.median(durations[1:]), nmf / counter.get_total_flops())
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("factorizer_knobs_benchmark"))
    parser.add_argument("-c", "--configuration", default="2d", choices=["2d", "3d_fullres"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, help="also write the table (markdown) to this file")
    args = parser.parse_args()

    workdir = args.workdir.resolve()
    folders = NnUNetFolders.inside(workdir)
    model_folder = folders.results / DATASET / f"{TRAINER}__nnUNetPlans__{args.configuration}"
    if not (model_folder / "fold_0" / "checkpoint_final.pth").is_file():
        run_demo(DemoSettings(workdir, (args.configuration,), TRAINER))
    os.environ.update(folders.environment())
    torch.set_num_threads(2)
    model = load_trained_model(model_folder)
    n_layers = len(factorizer_in(model.network).nmf_layers())
    settings = settings_to_compare(n_layers)
    runner = StageRunner(2 * len(settings), folders, workdir / "logs_knobs")
    dice = {}
    for index, setting in enumerate(settings):
        output = workdir / "knobs" / args.configuration / f"setting_{index}"
        if (output / "summary.json").is_file():  # predicted and evaluated by an earlier run: only time again
            print(f"{setting.name}: Dice from {output / 'summary.json'} (delete {output} to predict again)")
            dice[setting.name] = dice_from_summary(output)
        else:
            dice[setting.name] = predict_and_evaluate(runner, folders, args.configuration, setting, output)
    images_ts = folders.raw / DATASET / "imagesTs"
    images = [[path] for path in sorted(images_ts.glob("*_0000.nii.gz"))]
    timing = time_predictions(model, images, settings, args.repeats)

    reference = timing[settings[0].name][0]
    classes = list(next(iter(dice.values())))
    header = ["setting", "time (s, median)", "time / T=5", "NMF share of FLOPs", *(f"Dice {c}" for c in classes), "mean Dice"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for setting in settings:
        seconds, share = timing[setting.name]
        scores = dice[setting.name]
        cells = [setting.name, f"{seconds:.2f}", f"{seconds / reference:.2f}", f"{100 * share:.1f} %",
                 *(f"{scores[c]:.4f}" for c in classes), f"{sum(scores.values()) / len(scores):.4f}"]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(f"\n{TRAINER}, {args.configuration}, fold 0, {len(images)} test images, {n_layers} NMF layers "
          f"(trained with T = 5, rank 1, HALS):\n{table}")
    if args.output:
        args.output.write_text(table + "\n")


if __name__ == "__main__":
    main()
