"""Saved activations, peak memory and kernel launches of one training step of every family's trainer at
nnU-Net's reference plans, next to nnU-Net's own network: the memory table of docs/benchmarks.md.

Nothing is computed (fake tensors, see nnunet_deconver.analysis.training_step_cost), so the realistic
plans (3d_fullres 128^3 batch 2, 2d 512^2 batch 12; nnUNetPlans and the ResEnc M plans) take seconds
per network on a CPU. One table per plans configuration; ratios are to nnUNetTrainer's network.

    python benchmarks/training_step_memory.py [--configurations 3d_fullres 2d] [--resenc] [--trainers ...]
"""

from __future__ import annotations

import argparse
import sys

DEFAULT_TRAINERS = [
    "nnUNetTrainerDeconver", "nnUNetTrainerDeconver_selectiveCheckpointing", "nnUNetTrainerDeconver_noCheckpointing",
    "nnUNetTrainerFactorizerSwin", "nnUNetTrainerFactorizerSwin_noCheckpointing", "nnUNetTrainerDTC",
    "nnUNetTrainerDTC_noCheckpointing", "nnUNetTrainerDeconverDTC", "nnUNetTrainerSUM",
]
RESENC_TRAINERS = ["nnUNetTrainerResEncDTC", "nnUNetTrainerDeconver", "nnUNetTrainerFactorizerSwin"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configurations", nargs="+", default=["3d_fullres", "2d"])
    parser.add_argument("--resenc", action="store_true", help="the ResEnc M plans (default trainers: ResEnc ones)")
    parser.add_argument("--trainers", nargs="+")
    args = parser.parse_args()

    from nnunet_deconver.analysis.report import training_step_table
    from nnunet_deconver.analysis.training_step_cost import training_step_cost
    from nnunet_deconver.nnunet.profiling import reference_plans_target

    trainers = args.trainers or (RESENC_TRAINERS if args.resenc else DEFAULT_TRAINERS)
    for configuration in args.configurations:
        rows = {}
        baseline_name = None
        for trainer in trainers:
            target = reference_plans_target(trainer, configuration, resenc=args.resenc)
            if baseline_name is None:
                baseline_name = target.baseline_name
                rows[baseline_name] = training_step_cost(target.build_baseline, target.input_shape)
            rows[trainer] = training_step_cost(target.build, target.input_shape)
            print(f"{configuration}: {trainer} measured", file=sys.stderr, flush=True)
        plans = "nnUNetResEncUNetMPlans" if args.resenc else "nnUNetPlans"
        print(f"\n{plans} {configuration}, input {target.input_shape}\n")
        print(training_step_table(rows, baseline_name), flush=True)


if __name__ == "__main__":
    main()
