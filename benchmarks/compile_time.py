"""How long torch.compile (inductor) takes for each trainer's network at nnU-Net's reference topology.

nnU-Net compiles the network on CUDA by default; the graph, and so the compile time, depends on the
topology, not on the patch size (the NDC and the NMF initial factors are opaque operators, so no loop
is unrolled). This script builds each trainer's network from the reference plans (6 stages in 3-D,
8 in 2-D) with a small patch, and reports the first compiled training step (compilation included)
and a compiled step after it, on this machine's device, each in a fresh process.

    python benchmarks/compile_time.py [-c 3d_fullres] [--patch 64 64 64] [--trainers ...] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

_CHILD = r"""
import json, sys, time
import torch
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
from nnunet_deconver.nnunet.reference_plans import reference_configuration
from nnunet_deconver.nnunet.trainers import trainer_classes

name, configuration_name, patch, device = json.loads(sys.argv[1])
configuration = reference_configuration(configuration_name)
configuration.update(patch_size=patch, batch_size=1)
manager = PlansManager({"dataset_name": "D", "plans_name": "nnUNetPlans", "configurations": {"c": configuration}})
trainer = trainer_classes().get(name) or recursive_find_trainer_class_by_name(name)
network = trainer.build_network_architecture(manager, manager.get_configuration("c"), 1, 2, True).to(device)
compiled = torch.compile(network)
x = torch.randn(1, 1, *patch, device=device)
timings = []
for _ in range(2):
    started = time.perf_counter()
    sum(o.square().mean() for o in compiled(x)).backward()
    if device == "cuda":
        torch.cuda.synchronize()
    timings.append(time.perf_counter() - started)
print(json.dumps(timings))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--configuration", default="3d_fullres", choices=["3d_fullres", "2d"])
    parser.add_argument("--patch", type=int, nargs="+", default=[64, 64, 64])
    parser.add_argument("--trainers", nargs="+", default=[
        "nnUNetTrainer", "nnUNetTrainerDeconver", "nnUNetTrainerFactorizerSwin", "nnUNetTrainerDTC"])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(f"{args.configuration} reference topology, patch {args.patch}, batch 1, inductor on {args.device}")
    print("| trainer | first compiled step (s) | next compiled step (s) | compile time (s) |\n|---|---:|---:|---:|")
    for name in args.trainers:
        result = subprocess.run([sys.executable, "-c", _CHILD, json.dumps([name, args.configuration, args.patch,
                                                                           args.device])],
                                capture_output=True, text=True)
        if result.returncode != 0:
            print(f"| {name} | failed: {result.stderr.strip().splitlines()[-1]} | | |", flush=True)
            continue
        first, second = json.loads(result.stdout.strip().splitlines()[-1])
        print(f"| {name} | {first:.1f} | {second:.1f} | {first - second:.1f} |", flush=True)


if __name__ == "__main__":
    main()
