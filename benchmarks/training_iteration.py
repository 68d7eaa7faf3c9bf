"""One nnU-Net training iteration (forward, deep-supervision loss, backward, clip, SGD step):
the package's trainers vs nnUNetTrainer at identical plans, side by side in one run.

Usage (nnU-Net's folder variables set, the dataset planned and preprocessed):

    python benchmarks/training_iteration.py -d 990 -c 3d_fullres [--device cpu|cuda] [--repeats 10]
        [--trainers nnUNetTrainerDeconver nnUNetTrainerFactorizerSwin]

With ``--demo-dataset`` the script builds and plans the demo's MNI152 dataset in a temporary folder
first. It uses the real trainers' ``train_step`` on a synthetic batch of the plans' batch and patch
size, reports the median over the repeats (after one warm-up) and the ratio to nnUNetTrainer.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

BASELINE = "nnUNetTrainer"


def synthetic_batch(trainer) -> dict:
    """A batch shaped like the trainer's data loader output: image and one target per deep-supervision scale."""
    configuration = trainer.configuration_manager
    patch = configuration.patch_size
    batch_size = configuration.batch_size
    generator = torch.Generator().manual_seed(0)
    data = torch.randn(batch_size, trainer.num_input_channels, *patch, generator=generator)
    classes = trainer.label_manager.num_segmentation_heads
    targets = []
    for scale in trainer._get_deep_supervision_scales():
        shape = [max(1, round(size * factor)) for size, factor in zip(patch, scale)]
        targets.append(torch.randint(0, classes, (batch_size, 1, *shape), generator=generator).float())
    return {"data": data, "target": targets}


def time_train_step(dataset: str, configuration: str, trainer_name: str, device: torch.device, repeats: int) -> float:
    from nnunetv2.run.run_training import get_trainer_from_args

    trainer = get_trainer_from_args(dataset, configuration, 0, trainer_name, device=device)
    trainer.initialize()
    batch = synthetic_batch(trainer)
    timings = []
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        trainer.train_step(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings[1:])


def plan_demo_dataset(root: Path) -> str:
    from nnunet_deconver.nnunet.demo.mni152_dataset import write_mni152_dataset

    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[name] = str(root / name)
    write_mni152_dataset(root / "nnUNet_raw", dataset_id=990)
    planner = Path(sys.executable).parent / "nnUNetv2_plan_and_preprocess"
    subprocess.run([str(planner), "-d", "990", "-c", "2d", "3d_fullres", "-np", "1", "-npfp", "1"], check=True,
                   capture_output=True)
    return "990"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", "--dataset", help="planned dataset name or id")
    parser.add_argument("--demo-dataset", action="store_true", help="build and plan the demo dataset first")
    parser.add_argument("-c", "--configurations", nargs="+", default=["2d", "3d_fullres"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2, help="torch threads on CPU (default: 2)")
    parser.add_argument("--trainers", nargs="+", default=["nnUNetTrainerDeconver"],
                        help="trainers to compare with nnUNetTrainer (default: nnUNetTrainerDeconver)")
    args = parser.parse_args()
    trainers = [BASELINE, *args.trainers]
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        dataset = plan_demo_dataset(Path(scratch)) if args.demo_dataset else args.dataset
        if dataset is None:
            parser.error("give -d DATASET or --demo-dataset")
        ratios = [f"{t} / nnU-Net" for t in args.trainers]
        print(f"| configuration | {' | '.join(f'{t} (s)' for t in trainers)} | {' | '.join(ratios)} |")
        print("|---|" + "---|" * (len(trainers) + len(ratios)))
        for configuration in args.configurations:
            seconds = [time_train_step(dataset, configuration, t, torch.device(args.device), args.repeats)
                       for t in trainers]
            cells = [f"{s:.3f}" for s in seconds] + [f"{s / seconds[0]:.2f}" for s in seconds[1:]]
            print(f"| {configuration} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
