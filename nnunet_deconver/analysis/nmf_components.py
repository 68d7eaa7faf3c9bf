"""NMF spatial components of a trained Factorizer: papers/factorizer.md section 4.3.1, Fig. 6.

Each NMF layer factorizes its matrices as F G^T; with rank R every head (E channels) has R columns
of G, one weight per voxel of its window or image. Mapped back to space like the reconstruction
(Dematricize), they are the layer's "components": (C/E) * R maps that, in a trained model, outline
image regions (e.g. whole tumour vs tumour core in the paper's BraTS example).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from nnunet_deconver.architectures.factorizer_unet import FactorizerUNet


@dataclass(frozen=True)
class LayerComponents:
    """The components of one NMF layer for one input: (components, *spatial at the layer's level)."""

    number: int
    label: str
    components: np.ndarray


def default_layers(network: FactorizerUNet) -> tuple[int, ...]:
    """The first and the last NMF layer, as the paper's Fig. 6 shows."""
    return (1, len(network.nmf_layers()))


@torch.no_grad()
def nmf_components(network: FactorizerUNet, x: Tensor, layers: Sequence[int]) -> list[LayerComponents]:
    """Run ``x`` (1, C, *spatial) through ``network`` and return the components of the 1-based ``layers``.

    Raises:
        ValueError: a layer number outside 1 .. number of NMF layers.
    """
    labelled = network.labelled_nmf_layers()
    bad = [n for n in layers if not 1 <= n <= len(labelled)]
    if bad:
        raise ValueError(f"NMF layer(s) {bad} do not exist; this network has layers 1..{len(labelled)}.")
    inputs: dict[int, Tensor] = {}

    def recorder(number: int):
        def hook(_module: nn.Module, args: tuple[Tensor, ...]) -> None:
            inputs[number] = args[0]
        return hook

    handles = [labelled[n - 1][1].register_forward_pre_hook(recorder(n)) for n in layers]
    try:
        network(x)
    finally:
        for handle in handles:
            handle.remove()
    results = []
    for number in layers:
        label, layer = labelled[number - 1]
        components = layer.spatial_components(inputs[number])[0]
        results.append(LayerComponents(number, label, components.float().cpu().numpy()))
    return results


def _display_slice(volume: np.ndarray, slice_fraction: float) -> np.ndarray:
    """2-D image to show: the volume itself (2-D) or the slice at ``slice_fraction`` of its first axis
    (components of deep layers have fewer slices than the input)."""
    if volume.ndim == 2:
        return volume
    return volume[min(int(slice_fraction * volume.shape[0]), volume.shape[0] - 1)]


def save_components_figure(
    image: np.ndarray, layer: LayerComponents, path: Path, slice_fraction: float = 0.5
) -> None:
    """PNG: the network input (first channel) next to each component, all on the same field of view.

    Args:
        image: the network input's first channel, (*spatial).
        layer: the components of one layer.
        slice_fraction: for 3-D, where along the first axis to show a slice, as a fraction of it
            (the same anatomy at every resolution level).
    """
    panels = [("input", _display_slice(image, slice_fraction))]
    panels += [(f"component {i + 1}", _display_slice(c, slice_fraction)) for i, c in enumerate(layer.components)]
    columns = min(len(panels), 5)
    rows = -(-len(panels) // columns)
    figure = Figure(figsize=(2.6 * columns, 2.6 * rows + 0.4))
    axes = figure.subplots(rows, columns, squeeze=False)
    extent = (0, panels[0][1].shape[1], panels[0][1].shape[0], 0)
    for axis, (title, picture) in zip(axes.flat, panels):
        axis.imshow(picture, cmap="gray" if title == "input" else "magma", extent=extent, interpolation="nearest")
        axis.set_title(title, fontsize=9)
    for axis in axes.flat:
        axis.axis("off")
    figure.suptitle(f"NMF layer {layer.number} ({layer.label}): spatial factors G after Dematricize", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
