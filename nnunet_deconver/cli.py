"""The ``nnunet-deconver`` command: thin argument parsing on top of the package's tiers."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path


def _add_demo_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="end-to-end run on the embedded MNI152 tissue dataset: plan, train, predict, evaluate",
        description="Builds a small nnU-Net dataset from the MNI152 template shipped with nilearn, then runs "
        "nnUNetv2_plan_and_preprocess, nnUNetv2_train, nnUNetv2_predict and nnUNetv2_evaluate_folder "
        "and prints the test-set Dice per class.",
    )
    parser.add_argument("--workdir", type=Path, default=Path("nnunet_deconver_demo"),
                        help="new folder for the nnU-Net raw/preprocessed/results folders and logs "
                        "(must not exist; default: ./nnunet_deconver_demo)")
    parser.add_argument("-c", "--configurations", nargs="+", default=["2d", "3d_fullres"],
                        choices=["2d", "3d_fullres"], help="nnU-Net configurations to train (default: both)")
    parser.add_argument("-tr", "--trainer", default="nnUNetTrainerDeconver_demo",
                        help="trainer class name, as for nnUNetv2_train -tr (default: the short demo schedule)")
    parser.add_argument("-d", "--dataset-id", type=int, default=990, help="nnU-Net dataset id (default: 990)")
    parser.add_argument("-device", "--device", default="cpu", choices=["cpu", "cuda", "mps"],
                        help="device for training and prediction (default: cpu)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nnunet-deconver", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_demo_parser(subparsers)
    args = parser.parse_args(argv)

    if args.command == "demo":
        from nnunet_deconver.demo.pipeline import DemoSettings, run_demo

        try:
            run_demo(DemoSettings(args.workdir, tuple(args.configurations), args.trainer, args.dataset_id,
                                  device=args.device))
        except (FileExistsError, RuntimeError) as error:
            parser.exit(1, f"nnunet-deconver demo: error: {error}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
