"""Plain-text tables of a profile (:class:`Complexity`, :class:`TrainingStepCost`), and ``nnunet-deconver profile``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from nnunet_deconver.analysis.complexity import Complexity, measure_complexity
from nnunet_deconver.analysis.training_step_cost import TrainingStepCost, training_step_cost
from nnunet_deconver.analysis.training_step_peak import measured_step_peak_bytes
from nnunet_deconver.nnunet.presets import load_preset
from nnunet_deconver.nnunet.profiling import (
    ProfileTarget,
    meta_networks,
    model_folder_target,
    preset_target,
    reference_plans_target,
)


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def complexity_table(rows: dict[str, Complexity], batch_size: int) -> str:
    """Markdown table: parameters, FLOPs (full, and per voxel also in the Deconver paper's convention).
    The full count (2 FLOPs per multiply-accumulate of every convolution and matrix product, NMF
    included) is also the Factorizer paper's convention."""
    header = ["network", "params (M)", "GFLOPs / sample", "FLOPs/voxel full (K)", "FLOPs/voxel Deconver conv. (K)"]
    return _markdown(header, [
        [name, f"{c.parameters / 1e6:.2f}", f"{c.flops / batch_size / 1e9:.1f}", f"{c.flops_per_voxel / 1e3:.1f}",
         f"{c.paper_flops_per_voxel / 1e3:.1f}"]
        for name, c in rows.items()
    ])


def training_step_table(rows: dict[str, TrainingStepCost], baseline: str) -> str:
    """Markdown table of training-step costs, each with its ratio to the ``baseline`` row."""
    reference = rows[baseline]

    def gib(value: int, base: int) -> str:
        return f"{value / 2**30:.2f} ({value / base:.2f}x)"

    header = ["network", "saved fp32 (GiB)", "saved fp16 autocast (GiB)", "peak fp32 (GiB)",
              "peak fp16 autocast (GiB)", "kernel launches"]
    return _markdown(header, [
        [name, gib(c.saved_bytes_fp32, reference.saved_bytes_fp32),
         gib(c.saved_bytes_autocast, reference.saved_bytes_autocast), gib(c.peak_bytes_fp32, reference.peak_bytes_fp32),
         gib(c.peak_bytes_autocast, reference.peak_bytes_autocast),
         f"{c.launches} ({c.launches / reference.launches:.2f}x)"]
        for name, c in rows.items()
    ])


def _measured_peaks(target: ProfileTarget, device: str) -> str:
    builders: dict[str, Callable[[], nn.Module]] = {target.name: target.build, target.baseline_name: target.build_baseline}
    peaks = {name: measured_step_peak_bytes(build, target.input_shape, torch.device(device))
             for name, build in builders.items()}
    lines = [f"measured on {device} (one fp16-autocast training step, torch.cuda.max_memory_allocated):"]
    lines += [f"  {name}: {peak / 2**30:.2f} GiB" for name, peak in peaks.items()]
    return "\n".join(lines)


def profile_report(
    *,
    preset: str | None = None,
    model_folder: Path | None = None,
    trainer: str | None = None,
    reference_plans: str | None = None,
    resenc: bool = False,
    patch_size: tuple[int, ...] = (),
    input_channels: int = 1,
    num_classes: int = 2,
    batch_size: int = 1,
    device: str | None = None,
) -> str:
    """The profile of a paper preset at ``patch_size``, of a trained model folder at its plans' patch and
    batch, or of a trainer at nnU-Net's reference plans, next to nnU-Net's own network on the same topology:
    parameters and FLOPs (meta device), one training step's saved activations, peak memory and kernel
    launches (fake tensors), and, with ``device='cuda'``, the peak of a real step on the GPU.

    Raises:
        ValueError: a preset without a patch size, or an unusable preset / model folder / trainer.
    """
    if preset is not None:
        if not patch_size:
            raise ValueError("--preset needs --patch-size, e.g. --patch-size 64 64 64")
        target = preset_target(load_preset(preset), tuple(patch_size), input_channels, num_classes, batch_size)
    elif model_folder is not None:
        target = model_folder_target(model_folder)
    else:
        if trainer is None or reference_plans is None:
            raise ValueError("give --preset, -m MODEL_FOLDER, or -tr TRAINER with --reference-plans 3d_fullres|2d")
        target = reference_plans_target(trainer, reference_plans, resenc=resenc)
    ours, baseline = meta_networks(target)
    shape = target.input_shape
    complexity = {target.name: measure_complexity(ours, shape), target.baseline_name: measure_complexity(baseline, shape)}
    costs = {target.name: training_step_cost(target.build, shape),
             target.baseline_name: training_step_cost(target.build_baseline, shape)}
    sections = [f"input (batch, channels, *patch) = {shape}", complexity_table(complexity, shape[0]),
                "one training step (forward, loss, backward; saved = kept for backward, peak = estimate from "
                "tensor lifetimes; launches on the CUDA path):",
                training_step_table(costs, target.baseline_name)]
    if device is not None:
        sections.append(_measured_peaks(target, device))
    return "\n".join(sections)
