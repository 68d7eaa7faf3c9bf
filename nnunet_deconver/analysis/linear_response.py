"""A network's response to a unit delta: exact for a SUM's encoder-decoder at alpha = 0, a linearisation otherwise.

papers/segmentation-cnns-are-denoising-models.md, Appendix B: with every shrinkage threshold at zero
(alpha = 0) the encoder-decoder (ED) is the product of its convolutions, C_{b=0}(I) = K~_0 K~_1 K_1 K_0
(eq. 22-23), and its output for a Dirac delta I is the impulse response r (eq. 24).
:func:`sum_impulse_response` computes it with the protocol of :mod:`~nnunet_deconver.analysis.impulse`.

Any other network N (a U-Net with ReLUs and normalisation, a SUM at alpha > 0) is not linear, so it
has no impulse response. What it has is a Jacobian J(x0) at every input x0, the linear map that
approximates it near x0: N(x0 + e delta) = N(x0) + e J(x0) delta + o(e). :func:`linearised_response`
returns r = J(x0) delta, the response of eq. (24) for the linear map J(x0) in place of C_{b=0}, for a
delta in one input channel, read in one output channel. For a network that is linear this is its
impulse response (for any x0); otherwise it depends on x0 and describes the network only around it.
The input is the network's patch itself (no padding around it: the network sees only its patch), with
the delta where the impulse protocol puts it, at the phase P - 1 (mod P) of the stride grid, nearest
the patch's centre.

J(x0) delta is one forward-mode product (``torch.func.jvp``), exact. Networks with a layer that has no
forward-mode rule (an autograd Function without ``jvp`` or ``setup_context``: the SUM's shrinkage,
Deconver's NDC layer; ``grid_sample`` in DTC) get the central difference
(N(x0 + h delta) - N(x0 - h delta)) / 2h instead, two forward passes; in float64, with h = 1e-5 of the
input's scale, it agrees with exact products to about 1e-9 relative, except at units whose input lies
within h of a kink of their activation. The double-backward product (``torch.autograd.functional.jvp``)
is not used: a backward that is itself not differentiable (a custom op without a double backward, as
Deconver's lean NDC layer) drops out of it silently, even in strict mode (a small Deconver: 20 % off).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd

from nnunet_deconver.analysis.impulse import PerAxis, impulse_response, receptive_field, total_strides
from nnunet_deconver.architectures.sum_network import SUMNet
from nnunet_deconver.layers.shrinkage import shrinkage_scale

Network = Callable[[Tensor], Tensor]

FORWARD_MODE = "forward-mode (torch.func.jvp)"
CENTRAL_DIFFERENCE = "central difference (float64, step 1e-5 of the input's scale)"
EXACT = "exact (Appendix B, alpha = 0)"


@dataclass(frozen=True)
class NetworkResponse:
    """A response cropped around its delta, where the delta sits in the crop, and how it was computed."""

    response: Tensor
    delta_position: tuple[int, ...]
    method: str


def check_channel(channel: int, count: int, what: str) -> None:
    """Raise a ValueError naming ``what`` unless ``0 <= channel < count``."""
    if not 0 <= channel < count:
        raise ValueError(f"There is no {what} {channel}: the network has {count} ({what}s 0 .. {count - 1}).")


def pick_channel(output: Tensor, channel: int, what: str) -> Tensor:
    """``output[:, channel]`` kept as a channel axis, ``(B, 1, *spatial)``; ``what`` names it in errors."""
    check_channel(channel, output.shape[1], what)
    return output[:, channel:channel + 1]


def channel_operator(network: Network, *, input_channels: int, input_channel: int, output_channel: int,
                     output_name: str = "output channel") -> Network:
    """The ``(1, 1, *spatial) -> (1, 1, *spatial)`` operator :func:`impulse_response` expects, of a
    multi-channel ``network``: its input in ``input_channel`` (zeros in the others), its ``output_channel``.

    Raises:
        ValueError: ``input_channel`` is not one of the ``input_channels``.
    """
    check_channel(input_channel, input_channels, "input channel")

    def operator(x: Tensor) -> Tensor:
        embedded = x.new_zeros((x.shape[0], input_channels, *x.shape[2:]))
        embedded[:, input_channel] = x[:, 0]
        return pick_channel(network(embedded), output_channel, output_name)

    return operator


def sum_channels(network: SUMNet) -> tuple[int, int]:
    """(input channels, ED output channels) of a SUM: the ED output has the input's channels or one per class.

    Read from the first convolution (the encoder's, registered first) and the output layer's input.
    """
    def first_conv(module: nn.Module) -> _ConvNd:
        return next(layer for layer in module.modules() if isinstance(layer, _ConvNd))

    return first_conv(network).in_channels, first_conv(network.output_layer).in_channels


def sum_receptive_field(network: SUMNet) -> tuple[int, ...]:
    """The one-sided receptive field of a SUM's ED per axis (two convolutions per encoder and decoder level)."""
    return receptive_field(network.kernel_sizes, network.strides)


def sum_impulse_response(network: SUMNet, *, size: Sequence[int], input_channel: int = 0,
                         output_channel: int = 0) -> NetworkResponse:
    """The exact impulse response r (eq. 24) of a SUM's ED at alpha = 0, cropped to ``size``.

    The delta is in ``input_channel`` of the ED's input, the response is its ``output_channel``; the
    protocol (phase, zero margin beyond the receptive field) is :func:`impulse_response`'s. Computed in
    the network's dtype and device (float64 gives the exact linearity); the network is not changed
    (alpha is restored on exit).
    """
    parameter = next(network.parameters())
    operator = channel_operator(network.encoder_decoder, input_channels=sum_channels(network)[0],
                                input_channel=input_channel, output_channel=output_channel,
                                output_name="ED output channel")
    with shrinkage_scale(network, 0.0):
        response = impulse_response(operator, size=size, strides=network.strides, radius=sum_receptive_field(network),
                                    dtype=parameter.dtype, device=parameter.device)
    return NetworkResponse(response, tuple(n // 2 for n in size), EXACT)


def delta_index(patch_size: Sequence[int], strides: Sequence[PerAxis]) -> tuple[int, ...]:
    """Per axis, the index of phase P - 1 (mod P) nearest the patch's centre ``n // 2`` (the lower one on a tie),
    ``P`` the product of the per-stage ``strides``: where the impulse protocol puts the delta in the stride grid."""
    indices = []
    for n, period in zip(patch_size, total_strides(strides)):
        below = n // 2 - (n // 2 + 1) % period
        above = below + period
        nearest = above if below < 0 or above - n // 2 < n // 2 - below else below
        if not 0 <= nearest < n:
            raise ValueError(f"A patch of {tuple(patch_size)} has no sample of phase P - 1 for the stride products "
                             f"{total_strides(strides)}; the patch must be a multiple of them.")
        indices.append(nearest)
    return tuple(indices)


def crop_around(index: Sequence[int], patch_size: Sequence[int], size: Sequence[int]) -> tuple[slice, ...]:
    """The window of ``size`` (at most the patch) with ``index`` at ``size // 2``, shifted to lie in the patch."""
    starts = [min(max(i - s // 2, 0), n - s) for i, n, s in zip(index, patch_size, size)]
    return tuple(slice(start, start + s) for start, s in zip(starts, size))


def jacobian_vector_product(network: Network, x0: Tensor, tangent: Tensor) -> tuple[Tensor, str]:
    """J(x0) tangent of ``network`` and the method that computed it (module docstring: forward mode, else a
    central difference)."""
    try:
        return torch.func.jvp(network, (x0,), (tangent,))[1], FORWARD_MODE
    except RuntimeError:  # no forward-mode rule (NotImplementedError), or an old-style autograd Function
        pass
    step = 1e-5 * max(1.0, x0.abs().max().item())
    with torch.no_grad():
        difference = network(x0 + step * tangent) - network(x0 - step * tangent)
    return difference / (2 * step), CENTRAL_DIFFERENCE


def linearised_response(network: Network, x0: Tensor, *, input_channel: int, output_channel: int,
                        strides: Sequence[PerAxis], size: Sequence[int]) -> NetworkResponse:
    """r = J(x0) delta: the response of ``network`` linearised around ``x0`` (module docstring), cropped.

    Args:
        network: maps ``(1, C, *patch)`` to ``(1, K, *patch)`` (e.g. the pre-softmax logits).
        x0: the point of linearisation, ``(1, C, *patch)``, in the dtype and on the device of the network.
        input_channel: the channel of the delta; output_channel: the channel of the response.
        strides: the network's per-stage strides (the delta's phase, :func:`delta_index`).
        size: the crop per axis, at most the patch (:func:`crop_around`).

    Raises:
        ValueError: a channel the network does not have, or a crop larger than the patch.
    """
    patch_size = tuple(x0.shape[2:])
    if len(size) != len(patch_size) or any(not 0 < s <= n for s, n in zip(size, patch_size)):
        raise ValueError(f"The crop {tuple(size)} must fit the network's patch {patch_size}.")
    index = delta_index(patch_size, strides)
    check_channel(input_channel, x0.shape[1], "input channel")
    tangent = torch.zeros_like(x0)
    tangent[(0, input_channel, *index)] = 1
    product, method = jacobian_vector_product(lambda x: pick_channel(network(x), output_channel, "output channel"),
                                              x0, tangent)
    window = crop_around(index, patch_size, size)
    position = tuple(i - part.start for i, part in zip(index, window))
    return NetworkResponse(product[(0, 0, *window)].detach(), position, method)
