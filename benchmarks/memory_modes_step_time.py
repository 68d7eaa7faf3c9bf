"""What activation checkpointing costs in time: one training step of a trainer's network, per memory mode,
side by side with the same network built by an earlier version of the package (default: the commit
before the memory work), all at the same plans, on this machine.

Each measurement runs in its own process (PYTHONPATH picks the version), the variants alternate over
``--rounds`` rounds, and the table reports the median step (forward, deep-supervision loss, backward)
over all rounds and its ratio to the earlier version's. The plans are nnU-Net's reference plans
(nnunet_deconver.nnunet.reference_plans) with the patch and batch given here, so a CPU run stays short.

    python benchmarks/memory_modes_step_time.py                          # 3d_fullres, 64^3, batch 2
    python benchmarks/memory_modes_step_time.py -c 2d --patch 256 256 --batch 4
    python benchmarks/memory_modes_step_time.py --baseline-ref 415ed1f --rounds 3 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
MODE_TRAINERS = {"off": "_noCheckpointing", "selective": "_selectiveCheckpointing", "full": ""}

_CHILD = r"""
import json, statistics, sys, time
import torch
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from nnunet_deconver.nnunet.trainers import trainer_classes

configuration, trainer_name, repeats, threads = json.loads(sys.argv[1])
torch.set_num_threads(threads)
manager = PlansManager({"dataset_name": "Dataset000_Reference", "plans_name": "nnUNetPlans",
                        "configurations": {"reference": configuration}})
network = trainer_classes()[trainer_name].build_network_architecture(
    manager, manager.get_configuration("reference"), 1, 3, True)
x = torch.randn(configuration["batch_size"], 1, *configuration["patch_size"], generator=torch.Generator().manual_seed(0))
timings = []
for _ in range(repeats + 1):
    network.zero_grad(set_to_none=True)
    started = time.perf_counter()
    outputs = network(x)
    sum(output.square().mean() / 2**level for level, output in enumerate(outputs)).backward()
    timings.append(time.perf_counter() - started)
print(json.dumps(timings[1:]))
"""


def baseline_tree(ref: str, scratch: Path) -> Path:
    """A worktree of ``ref`` in ``scratch`` (removed with it)."""
    tree = scratch / "baseline"
    subprocess.run(["git", "-C", str(REPOSITORY), "worktree", "add", "--detach", str(tree), ref], check=True,
                   capture_output=True)
    return tree


def run_variant(tree: Path, trainer: str, configuration: dict, repeats: int, threads: int) -> list[float]:
    """Step timings of ``trainer``'s network from the package in ``tree``, in a fresh process."""
    arguments = json.dumps([configuration, trainer, repeats, threads])
    result = subprocess.run([sys.executable, "-c", _CHILD, arguments], capture_output=True, text=True,
                            env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"}, cwd=tree)
    if result.returncode != 0:
        raise RuntimeError(f"{trainer} from {tree} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--configuration", default="3d_fullres", choices=["3d_fullres", "2d"])
    parser.add_argument("--patch", type=int, nargs="+", default=[64, 64, 64])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("-tr", "--trainer", default="nnUNetTrainerDeconver")
    parser.add_argument("--baseline-ref", default="415ed1f", help="git revision of the earlier version")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per process (after one warm-up)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    sys.path.insert(0, str(REPOSITORY))
    from nnunet_deconver.nnunet.reference_plans import reference_configuration

    configuration = reference_configuration(args.configuration)
    configuration.update(patch_size=list(args.patch), batch_size=args.batch)
    with tempfile.TemporaryDirectory() as scratch:
        tree = baseline_tree(args.baseline_ref, Path(scratch))
        try:
            variants = {f"{args.baseline_ref} (before)": (tree, args.trainer)}
            variants |= {f"now, {mode}": (REPOSITORY, args.trainer + suffix) for mode, suffix in MODE_TRAINERS.items()}
            timings: dict[str, list[float]] = {name: [] for name in variants}
            for round_index in range(args.rounds):
                order = list(variants) if round_index % 2 == 0 else list(reversed(variants))
                for name in order:
                    timings[name] += run_variant(*variants[name], configuration, args.repeats, args.threads)
                    print(f"round {round_index + 1}/{args.rounds}: {name} done", file=sys.stderr, flush=True)
        finally:
            subprocess.run(["git", "-C", str(REPOSITORY), "worktree", "remove", "--force", str(tree)], check=False)
    medians = {name: statistics.median(values) for name, values in timings.items()}
    reference = medians[f"{args.baseline_ref} (before)"]
    print(f"{args.trainer}, {args.configuration} reference plans, patch {args.patch}, batch {args.batch}, "
          f"{args.threads} threads, median of {args.rounds * args.repeats} steps")
    print("| variant | step (s) | / before |\n|---|---|---|")
    for name, median in medians.items():
        print(f"| {name} | {median:.2f} | {median / reference:.2f} |")


if __name__ == "__main__":
    main()
