"""Plain-text tables of :class:`Complexity` measurements, and the report of ``nnunet-deconver profile``."""

from __future__ import annotations

from pathlib import Path

from nnunet_deconver.analysis.complexity import Complexity, measure_complexity
from nnunet_deconver.nnunet.presets import load_preset
from nnunet_deconver.nnunet.profiling import model_folder_networks, preset_networks


def complexity_table(rows: dict[str, Complexity], batch_size: int) -> str:
    """Markdown table: parameters, FLOPs (full, and per voxel also in the Deconver paper's convention),
    activation memory. The full count (2 FLOPs per multiply-accumulate of every convolution and matrix
    product, NMF included) is also the Factorizer paper's convention."""
    header = ["network", "params (M)", "GFLOPs / sample", "FLOPs/voxel full (K)", "FLOPs/voxel Deconver conv. (K)",
              f"activations, batch {batch_size} (GiB)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, c in rows.items():
        cells = [name, f"{c.parameters / 1e6:.2f}", f"{c.flops / batch_size / 1e9:.1f}",
                 f"{c.flops_per_voxel / 1e3:.1f}", f"{c.paper_flops_per_voxel / 1e3:.1f}",
                 f"{c.activation_bytes / 2**30:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def profile_report(
    *,
    preset: str | None = None,
    model_folder: Path | None = None,
    patch_size: tuple[int, ...] = (),
    input_channels: int = 1,
    num_classes: int = 2,
    batch_size: int = 1,
) -> str:
    """The profile of a paper preset at ``patch_size`` or of a trained model folder at its plans' patch and
    batch, next to nnU-Net's PlainConvUNet on the same topology (all on the meta device).

    Raises:
        ValueError: a preset without a patch size, or an unusable preset / model folder.
    """
    if preset is not None:
        if not patch_size:
            raise ValueError("--preset needs --patch-size, e.g. --patch-size 64 64 64")
        loaded = load_preset(preset)
        ours, baseline = preset_networks(loaded, tuple(patch_size), input_channels, num_classes)
        shape, name = (batch_size, input_channels, *patch_size), loaded.name
    else:
        assert model_folder is not None
        ours, baseline, shape = model_folder_networks(model_folder)
        name = model_folder.name
    rows = {name: measure_complexity(ours, shape),
            "nnU-Net PlainConvUNet, same topology": measure_complexity(baseline, shape)}
    return f"input (batch, channels, *patch) = {shape}\n{complexity_table(rows, shape[0])}"
