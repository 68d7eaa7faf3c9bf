"""Argument parsing of ``nnunet-deconver robustness`` (wired into :mod:`nnunet_deconver.cli`).

Errors of the request are raised as ValueError, FileNotFoundError or FileExistsError, each one line, before
anything is written; the caller prints them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DESCRIPTION = (
    "The SUM paper's robustness table (papers/segmentation-cnns-are-denoising-models.md, Appendix E, Table 2) for "
    "any nnU-Net dataset and trainers: the fold's validation cases (or -i/-l folders) are corrupted on their raw "
    "intensities, per channel, and predicted with nnU-Net's predictor from each trainer's model folder "
    "nnUNet_results/<Dataset>/<trainer>__<plans>__<configuration>, then evaluated with nnU-Net's evaluator. "
    "Corruptions: clean; blur_sigma1, blur_sigma2: Gaussian blur of sigma 1 or 2 voxels "
    "(scipy.ndimage.gaussian_filter, mode 'reflect', truncate 4), on all three axes for 3-D configurations and "
    "in-plane (the axes of nnU-Net's 2-D slices) for 2-D ones; noise_5pct, noise_10pct: additive Gaussian noise "
    "of sigma 5 or 10 % of the channel's intensity range (max - min), clipped back to that range, seeded from "
    "--seed, the case and the corruption. Prints the Dice per class and its mean over the foreground classes per "
    "trainer and corruption and writes robustness.json, robustness.csv and robustness.png, with the predictions "
    "in <output>/<trainer>/<corruption>/; an output folder with an earlier report is refused."
)


def add_robustness_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``robustness`` subcommand to ``subparsers``."""
    from nnunet_deconver.analysis.corruptions import CORRUPTION_NAMES

    parser = subparsers.add_parser(
        "robustness",
        help="Dice of trained models on blurred and noisy images (SUM paper Table 2), for any dataset and trainer",
        description=DESCRIPTION,
    )
    parser.add_argument("-d", "--dataset", required=True, help="dataset name or id, as for nnU-Net's -d")
    parser.add_argument("-c", "--configuration", required=True, help="nnU-Net configuration, e.g. 2d or 3d_fullres")
    parser.add_argument("-f", "--fold", default="0", help="fold whose weights (and validation cases) to use "
                        "(default: 0)")
    parser.add_argument("-tr", "--trainers", nargs="+", required=True,
                        help="trainer class names to compare, as for nnUNetv2_train -tr")
    parser.add_argument("-p", "--plans", default="nnUNetPlans", help="plans name (default: nnUNetPlans)")
    parser.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth", help="checkpoint file name "
                        "(default: checkpoint_final.pth)")
    parser.add_argument("-i", "--images", type=Path, help="folder of images named CASE_0000<ending> ... to use "
                        "instead of the fold's validation cases (with -l)")
    parser.add_argument("-l", "--labels", type=Path, help="with -i: folder of their labels CASE<ending>")
    parser.add_argument("-o", "--output", type=Path,
                        help="new folder for the report and predictions (default: nnUNet_results/<Dataset>/"
                        "robustness_<plans>_<configuration>_fold<fold>)")
    parser.add_argument("--corruptions", nargs="+", default=list(CORRUPTION_NAMES), metavar="NAME",
                        help=f"corruptions to run (default: all: {' '.join(CORRUPTION_NAMES)})")
    parser.add_argument("--seed", type=int, default=0, help="base seed of the noise (default: 0)")
    parser.add_argument("-device", "--device", default="cpu", choices=["cpu", "cuda", "mps"],
                        help="device for prediction (default: cpu)")
    parser.add_argument("-np", "--num-processes", type=int,
                        help="processes for segmentation export and evaluation (default: nnU-Net's, "
                        "nnUNet_def_n_proc)")


def run_robustness(args: argparse.Namespace) -> None:
    """Run the report the parsed arguments ask for; print the progress, the table and the files written."""
    from nnunetv2.configuration import default_num_processes

    from nnunet_deconver.analysis.robustness import RobustnessRequest, run_robustness_report
    from nnunet_deconver.analysis.robustness_report import format_table

    request = RobustnessRequest(
        args.dataset, args.configuration, tuple(args.trainers), fold=args.fold, plans=args.plans,
        checkpoint=args.checkpoint, corruptions=tuple(args.corruptions), images=args.images, labels=args.labels,
        output=args.output, device=args.device, seed=args.seed,
        num_processes=args.num_processes or default_num_processes,
    )
    report, written = run_robustness_report(request)
    print(format_table(report))
    for path in written:
        print(f"wrote {path}")
