"""Every trainer's training step on a CUDA GPU at nnU-Net's reference plans, next to nnUNetTrainer's.

For each trainer and configuration (nnunet_deconver.nnunet.reference_plans: 3d_fullres 128^3 batch 2,
2d 512^2 batch 12, nnUNetPlans), the network the trainer builds runs real training steps as nnU-Net
runs them (fp16 autocast, GradScaler, SGD with momentum), eagerly and under torch.compile: median
step time, peak allocated CUDA memory, and the first compiled step (compilation included). Ratios
are to nnUNetTrainer's network in the same mode. A trainer that runs out of memory is reported as
such and the others go on. Prints a markdown table (and writes it with --output).

    python benchmarks/gpu_training_step.py [--configurations 3d_fullres 2d] [--repeats 10] [--output FILE]

Without a CUDA device it says so and exits 0 (bash benchmarks/gpu.sh runs it).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
from pathlib import Path

import torch

DEFAULT_TRAINERS = [
    "nnUNetTrainer", "nnUNetTrainerDeconver", "nnUNetTrainerDeconver_noCheckpointing", "nnUNetTrainerFactorizerSwin",
    "nnUNetTrainerDTC", "nnUNetTrainerDeconverDTC",
]


def _row(trainer: str, configuration: str, compiled: bool, repeats: int) -> dict:
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from nnunet_deconver.analysis.training_step_peak import measured_step
    from nnunet_deconver.nnunet.reference_plans import reference_plans_manager

    manager = reference_plans_manager()
    configuration_manager = manager.get_configuration(configuration)
    trainer_class = recursive_find_trainer_class_by_name(trainer)
    shape = (configuration_manager.batch_size, 1, *configuration_manager.patch_size)
    torch._dynamo.reset()
    torch.cuda.empty_cache()
    try:
        seconds, peak, first = measured_step(
            lambda: trainer_class.build_network_architecture(manager, configuration_manager, 1, 2, True),
            shape, torch.device("cuda"), compiled=compiled, repeats=repeats,
        )
    except torch.OutOfMemoryError:
        return {"trainer": trainer, "configuration": configuration, "compiled": compiled, "oom": True}
    return {"trainer": trainer, "configuration": configuration, "compiled": compiled, "oom": False,
            "seconds": seconds, "peak": peak, "first": first}


def _table(rows: list[dict]) -> str:
    lines = ["| configuration | mode | trainer | step (s) | / nnU-Net | peak (GiB) | / nnU-Net | first step (s) |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    baselines = {(r["configuration"], r["compiled"]): r for r in rows if r["trainer"] == "nnUNetTrainer"}
    for r in rows:
        mode = "compiled" if r["compiled"] else "eager"
        if r["oom"]:
            lines.append(f"| {r['configuration']} | {mode} | {r['trainer']} | out of memory | | | | |")
            continue
        base = baselines.get((r["configuration"], r["compiled"]))
        ok = base is not None and not base["oom"]
        time_ratio = f"{r['seconds'] / base['seconds']:.2f}" if ok else "-"
        memory_ratio = f"{r['peak'] / base['peak']:.2f}" if ok else "-"
        lines.append(f"| {r['configuration']} | {mode} | {r['trainer']} | {r['seconds']:.3f} | {time_ratio} | "
                     f"{r['peak'] / 2**30:.2f} | {memory_ratio} | {r['first']:.1f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configurations", nargs="+", default=["3d_fullres", "2d"])
    parser.add_argument("--trainers", nargs="+", default=DEFAULT_TRAINERS)
    parser.add_argument("--modes", nargs="+", default=["eager", "compiled"], choices=["eager", "compiled"])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--output", type=Path, help="also write the table (with its header) to this file")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("No CUDA device here: nothing to measure (the fake-tensor estimates: nnunet-deconver profile -tr T "
              "--reference-plans 3d_fullres).")
        return 0
    header = (f"{datetime.date.today()}, {torch.cuda.get_device_name()}, torch {torch.__version__}, "
              f"{platform.node()}: median of {args.repeats} steps, fp16 autocast, SGD")
    print(header, flush=True)
    rows = []
    for configuration in args.configurations:
        for mode in args.modes:
            for trainer in args.trainers:
                rows.append(_row(trainer, configuration, mode == "compiled", args.repeats))
                print(rows[-1], file=sys.stderr, flush=True)
    table = _table(rows)
    print(table)
    if args.output is not None:
        args.output.write_text(f"{header}\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
