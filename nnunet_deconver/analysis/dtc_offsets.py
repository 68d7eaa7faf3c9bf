"""Where a trained DTC samples from: papers/dtc.md section 4.3, Fig. 7.

For the last decoder DTC (the highest-resolution upsampling) and one input image, eq. (1)'s
displacement lambda * offset * weight of every output voxel is read off the network and drawn three
ways on the network input: arrows (in-plane displacement), its length in input voxels of that
decoder level, and the density of the sampled positions (Fig. 7's "white points": regions many
output voxels sample from).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from nnunet_deconver.layers.dtc import DeformableTransposedConv, base_grid


@dataclass(frozen=True)
class SamplingField:
    """Sampling of one DTC for one input (batch element 0), in input voxels of the DTC's level.

    Attributes:
        displacement: (*output_size, d) displacement per output voxel along each spatial axis (axis order).
        positions: (*output_size, d) sampled positions, in input voxel coordinates (axis order).
        stride: the DTC's upsampling stride per axis.
    """

    displacement: np.ndarray
    positions: np.ndarray
    stride: tuple[int, ...]


def last_dtc(network: nn.Module) -> DeformableTransposedConv | None:
    """The DTC that upsamples to the highest resolution (decoders are built deepest first)."""
    modules = [m for m in network.modules() if isinstance(m, DeformableTransposedConv)]
    return modules[-1] if modules else None


@torch.no_grad()
def sampling_field(network: nn.Module, dtc: DeformableTransposedConv, x: Tensor) -> SamplingField:
    """Run ``x`` through ``network`` and read eq. (1) at ``dtc`` in voxel units."""
    captured: list[Tensor] = []
    handle = dtc.register_forward_pre_hook(lambda _module, args: captured.append(args[0]))
    try:
        network(x)
    finally:
        handle.remove()
    dtc_input = captured[0]
    input_size = dtc_input.shape[2:]
    displacement = dtc.displacement(dtc_input)[0]  # normalised, grid (last axis first) order
    output_size = displacement.shape[:-1]
    grid = base_grid(output_size, displacement) + displacement
    # normalised -> input voxel coordinates (align_corners=False): u = ((g + 1) * n - 1) / 2, axis order
    sizes = torch.tensor(list(input_size)[::-1], dtype=grid.dtype, device=grid.device)
    positions = ((grid + 1) * sizes - 1) / 2
    return SamplingField(
        displacement=(displacement * sizes / 2).flip(-1).cpu().numpy(),
        positions=positions.flip(-1).cpu().numpy(),
        stride=dtc.stride,
    )


def _plane(array: np.ndarray, slice_index: int | None) -> np.ndarray:
    return array if slice_index is None else array[slice_index]


def save_sampling_figure(image: np.ndarray, field: SamplingField, path: Path, slice_index: int | None) -> None:
    """PNG: arrows of the in-plane displacement, its length (all axes), and the density of sampled positions.

    Args:
        image: the network input's first channel at the DTC's output resolution, (*output_size).
        field: from :func:`sampling_field`.
        slice_index: for 3-D, the slice of the first axis to draw; ``None`` for 2-D.
    """
    picture = _plane(image, slice_index)
    displacement = _plane(field.displacement, slice_index)
    in_plane = displacement[..., -2:] * np.array(field.stride[-2:])  # in output voxels: drawn on the output grid
    length = np.linalg.norm(displacement, axis=-1)
    figure = Figure(figsize=(13, 4.6))
    arrows, magnitude, density = figure.subplots(1, 3)
    rows, columns = picture.shape
    step = max(1, max(rows, columns) // 24)
    ys, xs = np.mgrid[0:rows:step, 0:columns:step]
    arrows.imshow(picture, cmap="gray", interpolation="nearest")
    arrows.quiver(xs, ys, in_plane[::step, ::step, 1], in_plane[::step, ::step, 0], color="tab:orange",
                  angles="xy", scale_units="xy", scale=1, width=0.004)
    arrows.set_title("in-plane sampling offsets (true length)", fontsize=9)
    shown = magnitude.imshow(length, cmap="viridis", interpolation="nearest")
    figure.colorbar(shown, ax=magnitude, fraction=0.046, label="input voxels of this level")
    magnitude.set_title("|lambda * offset * weight|", fontsize=9)
    stride = np.array(field.stride[-2:])
    positions = ((_plane(field.positions, slice_index)[..., -2:] + 0.5) * stride - 0.5).reshape(-1, 2)
    histogram, _, _ = np.histogram2d(positions[:, 0], positions[:, 1], bins=(rows, columns),
                                     range=((-0.5, rows - 0.5), (-0.5, columns - 0.5)))
    density.imshow(picture, cmap="gray", interpolation="nearest")
    density.imshow(np.ma.masked_equal(histogram, 0), cmap="magma", alpha=0.8, interpolation="nearest")
    density.set_title("where output voxels sample from (count)", fontsize=9)
    for axis in (arrows, magnitude, density):
        axis.axis("off")
    figure.suptitle("last decoder DTC: sampling positions P_new = P_grid + lambda * offset * weight (eq. 1)",
                    fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
