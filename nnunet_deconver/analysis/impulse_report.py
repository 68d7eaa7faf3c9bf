"""``nnunet-deconver impulse``: the impulse and frequency response of a trained model, its metrics and figures.

papers/segmentation-cnns-are-denoising-models.md, Appendix B (impulse response), Appendix C (SDS, FDS,
FDV), Fig. 3 (response and spectrum) and Fig. 2 (signal flow, Appendix D).

* A SUM (the network contains a :class:`SUMNet`): the exact impulse response of its encoder-decoder
  at alpha = 0 (:func:`~nnunet_deconver.analysis.linear_response.sum_impulse_response`), on a zero
  input larger than the receptive field, cropped to ``size``. With ``alpha`` other than 0 the ED is
  not linear and its linearisation around the image (or the zero image) is reported instead.
* Any other network: the linearisation of its pre-softmax logits around the image's patch, or the
  zero image (:func:`~nnunet_deconver.analysis.linear_response.linearised_response`), on the plans'
  patch, cropped to at most the patch.

Channels: the delta is in input channel ``input_channel``. A SUM whose ED has the input's channel
count reports the same ED channel (the diagonal of its channel-to-channel response; the paper's
1-channel case); an ED with one map per class, and every other network, report output channel 1
(the first foreground class) unless ``output_channel`` names another.

3-D: the crop defaults to 64 per axis (128, the paper's 2-D crop, otherwise). The exact response needs
a zero input reaching max(N / 2, radius + P) beyond the delta on each side, so a 128^3 crop would mean
an input of at least 256^3 voxels: 16.7 M voxels, 4.3 GB per 32-channel float64 feature map, against
2.1 M voxels (0.5 GB) for 64^3; a deep 3-D SUM's receptive field can ask for more whatever the crop.
The response figure shows the planes through the delta (and through DC) normal to each axis; the
signal flow shows the chosen slice of the patch's first axis.

Everything is computed in float64, on a copy of the network. Written into the output folder:
``impulse.json``, ``impulse_response.png`` and, for a SUM with an image, ``signal_flow.png``;
existing files are never replaced.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from torch import Tensor, nn

from nnunet_deconver.analysis.impulse import PerAxis
from nnunet_deconver.analysis.impulse_figures import SignalFlow, save_impulse_figure, save_signal_flow_figure
from nnunet_deconver.analysis.linear_response import (
    NetworkResponse,
    linearised_response,
    sum_channels,
    sum_impulse_response,
    sum_receptive_field,
)
from nnunet_deconver.analysis.output_files import refuse_existing_outputs
from nnunet_deconver.analysis.response_metrics import response_metrics
from nnunet_deconver.architectures.sum_network import SUMNet
from nnunet_deconver.layers.shrinkage import shrinkage_scale
from nnunet_deconver.nnunet.trained_model import TrainedModel, load_trained_model, network_input

DEFAULT_SIZE = {2: 128, 3: 64}  # the paper's 2-D crop; 3-D: the FFT, metrics and figure of a 64^3 crop
RESPONSE_JSON = "impulse.json"
RESPONSE_FIGURE = "impulse_response.png"
SIGNAL_FLOW_FIGURE = "signal_flow.png"
FOREGROUND = 1  # the default output channel: the first foreground class


def _quiet(line: str) -> None:
    """The default ``progress``: say nothing."""


@dataclass(frozen=True)
class ImpulseRequest:
    """Which model and response, and where to write it (module docstring).

    ``size``: the crop per axis (one value for every axis, or one per axis; empty: 128 in 2-D, 64 in
    3-D); ``image``: one file per channel (the point of linearisation, and the signal-flow figure of a
    SUM); ``label``: the image's label file (signal flow); ``slice_index``: along the image's first axis;
    ``alpha``: SUM only (default 0, the exact response).

    Raises:
        ValueError: options that do not go together or are out of range.
    """

    model_folder: Path
    output: Path
    fold: str = "0"
    checkpoint: str = "checkpoint_final.pth"
    device: str = "cpu"
    size: tuple[int, ...] = ()
    image: tuple[Path, ...] = ()
    label: Path | None = None
    slice_index: int | None = None
    alpha: float | None = None
    input_channel: int = 0
    output_channel: int | None = None

    def __post_init__(self) -> None:
        if not self.image and (self.label is not None or self.slice_index is not None):
            raise ValueError("A label (-l) and a slice (--slice) need the image (-i).")
        if any(n < 3 for n in self.size):
            raise ValueError(f"The crop needs at least 3 samples per axis (the Sobel filter of FDV); "
                             f"got --size {self.size}.")
        if self.input_channel < 0 or (self.output_channel is not None and self.output_channel < 0):
            raise ValueError("Channels are numbered from 0.")
        if self.alpha is not None and not math.isfinite(self.alpha):
            raise ValueError(f"alpha must be a finite number; got {self.alpha}.")

    def targets(self) -> list[Path]:
        """The files this request may write."""
        names = [RESPONSE_JSON, RESPONSE_FIGURE] + ([SIGNAL_FLOW_FIGURE] if self.image else [])
        return [self.output / name for name in names]


@dataclass(frozen=True)
class PlannedNetwork:
    """A trained network and what the command needs of its plans (the nnU-Net patch, strides, input channels)."""

    network: nn.Module
    patch_size: tuple[int, ...]
    strides: Sequence[PerAxis]
    input_channels: int


@dataclass(frozen=True)
class ImageWindow:
    """An image as the network sees it: the plans' patch around the chosen slice, and its label there."""

    window: Tensor  # (1, channels, *patch_size)
    position: int  # the chosen slice in the window's first axis (3-D); 0 in 2-D
    name: str
    label: np.ndarray | None = None  # (*patch_size)


@dataclass(frozen=True)
class _Computed:
    """A response and what the report says about it."""

    response: NetworkResponse
    kind: str
    output_channel: int
    output: str
    alpha: float | None
    notes: list[str]
    radius: tuple[int, ...] | None = None


def impulse_report(request: ImpulseRequest, *, progress: Callable[[str], None] = _quiet) -> list[str]:
    """Load the model folder's fold, compute, write the files; returns the lines to print (``progress`` gets
    a line before each long step).

    Raises:
        FileExistsError: an output exists already (checked before anything is loaded or computed).
        FileNotFoundError: no such checkpoint, image or label file.
        ValueError: options the model does not support (``alpha`` for a model that is not a SUM, channels).
    """
    refuse_existing_outputs(request.targets())
    inputs = [*request.image, *([request.label] if request.label else [])]
    missing = [str(path) for path in inputs if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"{', '.join(missing)} does not exist.")
    if request.fold != "all" and not request.fold.isdigit():
        raise ValueError(f"The fold must be a number or 'all'; got {request.fold!r}.")
    progress(f"loading fold {request.fold} of {request.model_folder} ...")
    model = load_trained_model(request.model_folder, request.fold if request.fold == "all" else int(request.fold),
                               request.checkpoint, request.device)
    planned = PlannedNetwork(model.network, tuple(model.configuration_manager.patch_size),
                             model.configuration_manager.pool_op_kernel_sizes, _input_channels(model))
    return write_impulse_outputs(request, planned, image=_image_window(model, request) if request.image else None,
                                 progress=progress)


def _input_channels(model: TrainedModel) -> int:
    return determine_num_input_channels(model.plans_manager, model.configuration_manager, model.dataset_json)


def _image_window(model: TrainedModel, request: ImpulseRequest) -> ImageWindow:
    """Preprocess the image (and label) like nnUNetv2_predict, cut the plans' patch around the slice."""
    preprocessor = model.configuration_manager.preprocessor_class(verbose=False)
    data, seg, _ = preprocessor.run_case([str(f) for f in request.image], request.label and str(request.label),
                                         model.plans_manager, model.configuration_manager, model.dataset_json)
    patch_size = model.configuration_manager.patch_size
    window, position = network_input(data, patch_size, request.slice_index)
    label = network_input(seg.astype(np.float32), patch_size, request.slice_index)[0][0, 0] if request.label else None
    return ImageWindow(window, position, request.image[0].name, None if label is None else label.numpy())


def write_impulse_outputs(request: ImpulseRequest, planned: PlannedNetwork, *, image: ImageWindow | None,
                          progress: Callable[[str], None] = _quiet) -> list[str]:
    """Compute the response of ``planned.network``, its metrics, and write the JSON and figures of ``request``
    (``progress`` gets a line before the computation).

    Returns:
        The lines to print: what was computed, a table of SDS, FDS, FDV, notes, and the files written.

    Raises:
        FileExistsError: an output exists already (nothing is computed).
        ValueError: options the network does not support, or a response that is zero everywhere.
    """
    refuse_existing_outputs(request.targets())
    sum_net = next((module for module in planned.network.modules() if isinstance(module, SUMNet)), None)
    if sum_net is None and request.alpha is not None:
        raise ValueError(f"--alpha scales a SUM's shrinkage thresholds; {type(planned.network).__name__} is not a SUM.")
    network = _float64_copy(sum_net or planned.network, request.device)
    exact = sum_net is not None and not request.alpha
    what = (f"the exact ED response (receptive field radius {sum_receptive_field(network)})" if exact
            else f"the linearised response on the patch {planned.patch_size}")
    progress(f"computing {what} in float64 on {request.device} ...")
    computed = (_sum_response if sum_net is not None else _logits_response)(request, planned, network, image)
    response = computed.response
    if not response.response.any():
        hint = "; linearise around an image (-i)" if computed.radius is None and image is None else ""
        raise ValueError(f"The {computed.kind} is zero everywhere (no path from the delta is active there), so SDS, "
                         f"FDS and FDV are undefined{hint}.")
    metrics = response_metrics(response.response, delta_position=response.delta_position)
    request.output.mkdir(parents=True, exist_ok=True)
    report = {
        "model_folder": str(request.model_folder), "fold": request.fold, "checkpoint": request.checkpoint,
        "network": type(planned.network).__name__, "kind": computed.kind, "alpha": computed.alpha,
        "method": response.method, "input_channel": request.input_channel, "output": computed.output,
        "image": [str(path) for path in request.image] or None, "slice": request.slice_index,
        "patch_size": list(planned.patch_size), "crop_size": list(response.response.shape),
        "delta_position": list(response.delta_position),
        "receptive_field_radius": list(computed.radius) if computed.radius else None, "dtype": "float64",
        "metrics": {"SDS": metrics.sds, "FDS": metrics.fds, "FDV": metrics.fdv}, "notes": computed.notes,
    }
    written = [request.output / RESPONSE_JSON, request.output / RESPONSE_FIGURE]
    written[0].write_text(json.dumps(report, indent=2) + "\n")
    title = f"{type(planned.network).__name__}: {computed.kind}, {computed.output}"
    save_impulse_figure(response.response.cpu().numpy(), written[1], delta_position=response.delta_position,
                        metrics=metrics, title=title)
    if sum_net is not None and image is not None:
        written.append(request.output / SIGNAL_FLOW_FIGURE)
        save_signal_flow_figure(_signal_flow(network, image, request.input_channel, computed.output_channel),
                                written[-1], title=f"{type(planned.network).__name__} on {image.name}")
    size = " x ".join(map(str, response.response.shape))
    return [
        f"{computed.kind} of {type(planned.network).__name__} ({request.model_folder}, fold {request.fold}), "
        f"input channel {request.input_channel} -> {computed.output}",
        f"crop {size}, delta at {response.delta_position}, {response.method}",
        f"{'SDS':>10} {'FDS':>10} {'FDV':>10}",
        f"{metrics.sds:10.3f} {metrics.fds:10.3f} {metrics.fdv:10.4f}",
        *(f"note: {note}" for note in computed.notes),
        *(f"wrote {path}" for path in written),
    ]


def _float64_copy(network: nn.Module, device: str) -> nn.Module:
    """A float64 copy in eval mode, without parameter gradients (the trained network stays as it is)."""
    duplicate = copy.deepcopy(network).to(device=device, dtype=torch.float64).eval()
    return duplicate.requires_grad_(False)


def _crop(request: ImpulseRequest, ndim: int) -> tuple[int, ...]:
    """The requested crop per axis (:class:`ImpulseRequest`'s ``size``)."""
    size = request.size or (DEFAULT_SIZE[ndim],)
    if len(size) not in (1, ndim):
        raise ValueError(f"--size needs one value or one per axis ({ndim}); got {' '.join(map(str, size))}.")
    return tuple(size) * ndim if len(size) == 1 else tuple(size)


def _point(planned: PlannedNetwork, image: ImageWindow | None, device: str) -> tuple[Tensor, str]:
    """The point of linearisation x0 and its description: the image's patch, or the zero image."""
    if image is None:
        return torch.zeros((1, planned.input_channels, *planned.patch_size), dtype=torch.float64, device=device), \
            "the zero image"
    return image.window.to(device=device, dtype=torch.float64), f"the image {image.name}"


def _linearise(request: ImpulseRequest, planned: PlannedNetwork, network, image: ImageWindow | None,
               output_channel: int) -> tuple[NetworkResponse, str, list[str]]:
    """The linearised response on the patch; the crop clipped to the patch (with a note)."""
    requested = _crop(request, len(planned.patch_size))
    crop = tuple(min(s, n) for s, n in zip(requested, planned.patch_size))
    notes = [f"the crop {requested} exceeds the patch {planned.patch_size} the network sees: cropped to {crop}"] \
        if crop != requested else []
    x0, point = _point(planned, image, request.device)
    response = linearised_response(network, x0, input_channel=request.input_channel, output_channel=output_channel,
                                   strides=planned.strides, size=crop)
    notes.append(f"a linearisation around {point}: the network is not linear, the response changes with the image")
    return response, point, notes


def _sum_response(request: ImpulseRequest, planned: PlannedNetwork, network: SUMNet,
                  image: ImageWindow | None) -> _Computed:
    inputs, outputs = sum_channels(network)
    default = request.input_channel if inputs == outputs else FOREGROUND
    channel = default if request.output_channel is None else request.output_channel
    output = f"ED channel {channel}"
    alpha = request.alpha or 0.0
    if alpha == 0.0:
        response = sum_impulse_response(network, size=_crop(request, len(planned.patch_size)),
                                        input_channel=request.input_channel, output_channel=channel)
        return _Computed(response, "exact ED at alpha=0", channel, output, 0.0, [], sum_receptive_field(network))
    with shrinkage_scale(network, alpha):
        response, point, notes = _linearise(request, planned, network.encoder_decoder, image, channel)
    return _Computed(response, f"linearisation of the ED at alpha={alpha:g} around {point}", channel, output, alpha,
                     notes)


def _logits_response(request: ImpulseRequest, planned: PlannedNetwork, network: nn.Module,
                     image: ImageWindow | None) -> _Computed:
    channel = FOREGROUND if request.output_channel is None else request.output_channel
    response, point, notes = _linearise(request, planned, network, image, channel)
    return _Computed(response, f"linearisation of the logits around {point}", channel, f"logit channel {channel}",
                     None, notes)


@torch.no_grad()
def _signal_flow(network: SUMNet, image: ImageWindow, input_channel: int, output_channel: int) -> SignalFlow:
    """Fig. 2's signals on the image's slice: input, ED at alpha = 0 and 1, prediction (argmax), label."""
    x = image.window.to(device=next(network.parameters()).device, dtype=torch.float64)
    with shrinkage_scale(network, 0.0):
        linear = network.encoder_decoder(x)
    with shrinkage_scale(network, 1.0):
        c_hat = network.encoder_decoder(x)
    prediction = network.output_layer(c_hat).argmax(dim=1)

    def plane(values: Tensor | np.ndarray) -> np.ndarray:
        values = values.cpu().numpy() if isinstance(values, Tensor) else values
        return values[image.position] if values.ndim == 3 else values

    return SignalFlow(plane(x[0, input_channel]), plane(linear[0, output_channel]), plane(c_hat[0, output_channel]),
                      plane(prediction[0]), None if image.label is None else plane(image.label))
