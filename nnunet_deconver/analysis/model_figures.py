"""The figures ``nnunet-deconver nmf-components`` and ``dtc-offsets`` draw for a trained model folder and an image.

Both load one fold of the model folder, preprocess the image like nnUNetv2_predict and cut the plans'
patch around the chosen slice; existing figures are never replaced.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from nnunet_deconver.analysis.dtc_offsets import last_dtc, sampling_field, save_sampling_figure
from nnunet_deconver.analysis.nmf_components import default_layers, nmf_components, save_components_figure
from nnunet_deconver.analysis.output_files import refuse_existing_outputs
from nnunet_deconver.nnunet.inference_knobs import factorizer_in
from nnunet_deconver.nnunet.trained_model import TrainedModel, load_trained_model, network_input, preprocess_image


@dataclass(frozen=True)
class FigureRequest:
    """Which model, image and slice to draw, and where."""

    model_folder: Path
    image: Sequence[Path]
    output: Path
    fold: str = "0"
    checkpoint: str = "checkpoint_final.pth"
    device: str = "cpu"
    slice_index: int | None = None


def _model_and_input(request: FigureRequest, targets: Sequence[Path]) -> tuple[TrainedModel, torch.Tensor, int]:
    """Load the fold, preprocess the image, cut the network input; refuse targets that exist already."""
    refuse_existing_outputs(targets)
    fold = request.fold if request.fold == "all" else int(request.fold)
    model = load_trained_model(request.model_folder, fold, request.checkpoint, request.device)
    x, position = network_input(preprocess_image(model, request.image), model.configuration_manager.patch_size,
                                request.slice_index)
    request.output.mkdir(parents=True, exist_ok=True)
    return model, x, position


def _component_figure(output: Path, layer: int) -> Path:
    return output / f"nmf_layer{layer:02d}_components.png"


def write_nmf_component_figures(request: FigureRequest, layers: Sequence[int] = ()) -> list[str]:
    """One PNG per NMF layer (default: the first and the last); returns one line per figure written.

    Raises:
        ValueError: the model is not a Factorizer, or a layer does not exist.
        FileExistsError: a figure exists already.
    """
    model, x, position = _model_and_input(request, [_component_figure(request.output, n) for n in layers])
    network = factorizer_in(model.network)
    if network is None:
        raise ValueError(f"{request.model_folder} holds a {type(model.network).__name__}, not a Factorizer; NMF "
                         f"components exist only in Factorizer models.")
    layers = list(layers) or list(default_layers(network))
    patch_size = model.configuration_manager.patch_size
    fraction = (position + 0.5) / patch_size[0] if len(patch_size) == 3 else 0.5
    written = []
    for layer in nmf_components(network, x.to(model.device), layers):
        target = _component_figure(request.output, layer.number)
        save_components_figure(x[0, 0].numpy(), layer, target, fraction)
        written.append(f"wrote {target}  (layer {layer.number}, {layer.label}, "
                       f"{layer.components.shape[0]} components of size {layer.components.shape[1:]})")
    return written


def write_dtc_offsets_figure(request: FigureRequest) -> str:
    """The PNG of where the last decoder DTC samples from; returns the line to print.

    Raises:
        ValueError: the model has no DTC upsampling.
        FileExistsError: the figure exists already.
    """
    target = request.output / "dtc_sampling_offsets.png"
    model, x, position = _model_and_input(request, [target])
    dtc = last_dtc(model.network)
    if dtc is None:
        raise ValueError(f"{request.model_folder} holds a {type(model.network).__name__} without DTC upsampling; "
                         f"train with a DTC trainer (e.g. -tr nnUNetTrainerDTC) or a DTC preset.")
    field = sampling_field(model.network, dtc, x.to(model.device))
    three_d = len(model.configuration_manager.patch_size) == 3
    save_sampling_figure(x[0, 0].numpy(), field, target, position if three_d else None)
    length = abs(field.displacement).max()
    return f"wrote {target}  (stride {field.stride}, largest displacement {length:.2f} input voxels of that level)"
