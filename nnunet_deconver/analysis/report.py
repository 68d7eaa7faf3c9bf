"""Plain-text tables of :class:`Complexity` measurements."""

from __future__ import annotations

from nnunet_deconver.analysis.complexity import Complexity


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
