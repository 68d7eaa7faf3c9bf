"""SUM, the simplified U-Net proxy of papers/segmentation-cnns-are-denoising-models.md (section 3.2, Fig. 1).

A U-shaped encoder-decoder (ED) without biases, normalisation or residuals, whose every convolution is
followed by a learned soft shrinkage (eq. 18), which resamples with the fixed Haar wavelet and lets
the high bands bypass the lower levels, followed by a pointwise output layer Omega. At alpha = 0 every
shrinkage is the identity and the ED is linear (eq. 15): it has an impulse response (Appendix B).

Topology, as the authors' released code builds it (the facts sheet, sum-facts.md next to DESIGN.md),
on nnU-Net's planned stages s = 0 .. S - 1 (widths C_s, kernels k_s, strides; the paper: S = 5,
C = 8, 16, 32, 64, 128, 3 x 3, strides 2):

* encoder level l < S - 1: conv C_{l-1} -> C_l, shrink, conv C_l -> C_l, shrink = F_l; the Haar DWT
  with the next stage's stride splits F_l into the low band (down the U) and the high bands H_l;
* bottleneck (level S - 1): conv C_{S-2} -> C_{S-1}, shrink, conv C_{S-1} -> C_{S-2}, shrink;
* decoder level l = S - 2 .. 0: y = IDWT(low, H_l); z = shrink(conv_a(y) + conv_b(F_l)); the level's
  output is shrink(conv_c(z)), conv_c narrowing C_l -> C_{l-1}, the width the next IDWT needs. At level
  0 it returns to the ED's output channels (C_{-1}): the ED output c^ ("the input signal to the output
  layer"), with a shrinkage on it too.

Convolutions are bias-free with replicate padding (``padding_mode``) and PyTorch's default
initialisation. The ED output has the input's channel count (``ed_channels='input'``, the paper: c^
can be compared with x, which the SUM_Rec term and the impulse tools use) or one map per class
(``ed_channels='classes'``). Omega is pointwise only: ``'pointwise'``, a 1 x 1 convolution into
nnU-Net's logits; or ``'paper'``, the paper's m^ = clamp(w c^, 0, 1) (one foreground map, binary tasks),
returned as the logits (1 - m^, m^) so that nnU-Net's argmax decides m^ > 0.5 as the paper does.
Deep supervision adds 1 x 1 heads on the outputs of the decoder levels 1 .. S - 2; they read the ED,
they are not part of it. The paper's network has none (``deep_supervision_heads=False``): with deep
supervision on it then returns a list with the full-resolution logits only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from dynamic_network_architectures.building_blocks.helper import convert_conv_op_to_dim
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd

from nnunet_deconver.architectures.hyperparameter_checks import (
    check_choice,
    check_flag,
    check_integer,
    invalid,
)
from nnunet_deconver.architectures.idle_parameters import with_idle_parameters_in_graph
from nnunet_deconver.architectures.registry import register_architecture
from nnunet_deconver.architectures.unet_scaffold import (
    check_input_size,
    planned_kernels_and_strides,
    size_divisor,
    stage_features,
)
from nnunet_deconver.layers.haar_wavelet import HaarDWT, HaarIDWT
from nnunet_deconver.layers.same_padding import PADDING_MODES, same_padding
from nnunet_deconver.layers.shrinkage import SoftShrinkage

ED_CHANNELS = ("input", "classes")
OUTPUT_LAYERS = ("pointwise", "paper")


class PaddedConv(nn.Module):
    """A bias-free 'same' convolution: :func:`same_padding` (keeps nothing for backward), then ``conv`` unpadded."""

    def __init__(self, conv_op: type[_ConvNd], in_channels: int, out_channels: int, kernel: tuple[int, ...],
                 padding_mode: str) -> None:
        super().__init__()
        self.conv = conv_op(in_channels, out_channels, kernel_size=kernel, bias=False)
        self.padding_mode = padding_mode

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(same_padding(x, self.conv.kernel_size, self.padding_mode))

    def extra_repr(self) -> str:
        return f"padding_mode={self.padding_mode!r}"


class _ConvFactory:
    """:class:`PaddedConv` of one dimensionality and padding mode."""

    def __init__(self, conv_op: type[_ConvNd], padding_mode: str) -> None:
        self.conv_op = conv_op
        self.padding_mode = padding_mode

    def __call__(self, in_channels: int, out_channels: int, kernel: tuple[int, ...]) -> PaddedConv:
        return PaddedConv(self.conv_op, in_channels, out_channels, kernel, self.padding_mode)


class ConvShrinkPair(nn.Module):
    """conv, shrink, conv, shrink: an encoder level (C_{l-1} -> C_l -> C_l) or the bottleneck (C_{S-2} -> C_{S-1} ->
    C_{S-2})."""

    def __init__(self, conv: _ConvFactory, channels: tuple[int, int, int], kernel: tuple[int, ...],
                 leaks: tuple[float, float]) -> None:
        super().__init__()
        c_in, c_mid, c_out = channels
        self.conv1 = conv(c_in, c_mid, kernel)
        self.shrink1 = SoftShrinkage(c_mid, leaks=leaks)
        self.conv2 = conv(c_mid, c_out, kernel)
        self.shrink2 = SoftShrinkage(c_out, leaks=leaks)

    def forward(self, x: Tensor) -> Tensor:
        return self.shrink2(self.conv2(self.shrink1(self.conv1(x))))


class SUMDecoderLevel(nn.Module):
    """IDWT of (low band, bypassed high bands), merge with the skip F_l, narrow to C_{l-1}."""

    def __init__(self, conv: _ConvFactory, channels: int, out_channels: int, kernel: tuple[int, ...],
                 stride: tuple[int, ...], leaks: tuple[float, float]) -> None:
        super().__init__()
        self.idwt = HaarIDWT(stride)
        self.conv_up = conv(channels, channels, kernel)  # conv_a, on the IDWT output
        self.conv_skip = conv(channels, channels, kernel)  # conv_b, on F_l
        self.shrink1 = SoftShrinkage(channels, leaks=leaks)
        self.conv_narrow = conv(channels, out_channels, kernel)  # conv_c
        self.shrink2 = SoftShrinkage(out_channels, leaks=leaks)

    def forward(self, low: Tensor, high: Tensor, skip: Tensor) -> Tensor:
        merged = self.shrink1(self.conv_up(self.idwt(torch.cat((low, high), dim=1))) + self.conv_skip(skip))
        return self.shrink2(self.conv_narrow(merged))


class SUMEncoder(nn.Module):
    """Encoder levels with their DWTs, and the bottleneck; returns the skips, high bands and bottom."""

    def __init__(self, conv: _ConvFactory, input_channels: int, features: list[int], kernels: list[tuple[int, ...]],
                 strides: list[tuple[int, ...]], leaks: tuple[float, float]) -> None:
        super().__init__()
        last = len(features) - 1
        widths = [input_channels, *features]
        self.levels = nn.ModuleList(
            ConvShrinkPair(conv, (widths[level], widths[level + 1], widths[level + 1]), kernels[level], leaks)
            for level in range(last)
        )
        self.dwts = nn.ModuleList(HaarDWT(strides[level + 1]) for level in range(last))
        self.bottleneck = ConvShrinkPair(conv, (features[last - 1], features[last], features[last - 1]),
                                         kernels[last], leaks)

    def forward(self, x: Tensor) -> tuple[list[Tensor], list[Tensor], Tensor]:
        skips, highs = [], []
        for level, dwt in zip(self.levels, self.dwts):
            skip = level(x)
            bands = dwt(skip)
            x = bands[:, : skip.shape[1]]
            skips.append(skip)
            highs.append(bands[:, skip.shape[1]:])
        return skips, highs, self.bottleneck(x)


class SUMDecoder(nn.Module):
    """Decoder levels S - 2 .. 0 and the deep-supervision heads; ``deep_supervision`` is nnU-Net's toggle."""

    def __init__(self, conv: _ConvFactory, ed_channels: int, features: list[int], kernels: list[tuple[int, ...]],
                 strides: list[tuple[int, ...]], num_classes: int, leaks: tuple[float, float],
                 deep_supervision: bool, heads: bool) -> None:
        super().__init__()
        self.deep_supervision = deep_supervision
        narrowed = [ed_channels, *features]
        levels = reversed(range(len(features) - 1))
        self.levels = nn.ModuleList(
            SUMDecoderLevel(conv, features[level], narrowed[level], kernels[level], strides[level + 1], leaks)
            for level in levels
        )
        head_levels = reversed(range(1, len(features) - 1)) if heads else ()
        self.heads = nn.ModuleList(  # on the outputs of levels S - 2 .. 1, at those levels' resolution
            conv.conv_op(narrowed[level], num_classes, kernel_size=1) for level in head_levels
        )

    def forward(self, skips: list[Tensor], highs: list[Tensor], bottom: Tensor) -> list[Tensor]:
        """The output of every level, deepest first; the last one is the ED output c^."""
        outputs = [bottom]
        for level, skip, high in zip(self.levels, reversed(skips), reversed(highs)):
            outputs.append(level(outputs[-1], high, skip))
        return outputs[1:]

    def auxiliary_logits(self, outputs: list[Tensor]) -> list[Tensor]:
        """Deep-supervision logits of levels 1 .. S - 2, highest resolution first."""
        return [head(output) for head, output in zip(self.heads, outputs[:-1])][::-1]


class PaperOutputLayer(nn.Module):
    """Omega of the paper: m^ = clamp(w c^, 0, 1), as the two logits (1 - m^, m^) of a binary task."""

    def __init__(self, conv_op: type[_ConvNd], ed_channels: int, *, bias: bool) -> None:
        super().__init__()
        self.out = conv_op(ed_channels, 1, kernel_size=1, bias=bias)

    def forward(self, c_hat: Tensor) -> Tensor:
        foreground = self.out(c_hat).clamp(0.0, 1.0)
        return torch.cat((1.0 - foreground, foreground), dim=1)


@register_architecture()
class SUMNet(nn.Module):
    """The SUM on nnU-Net plans quantities (module docstring); ``forward`` returns nnU-Net's logits.

    Args:
        input_channels, n_stages, features_per_stage, conv_op, kernel_sizes, strides, num_classes:
            nnU-Net's planned topology (``features_per_stage``: C_0 .. C_{S-1}, the bottleneck's last).
            Strides must be 1 or 2 on every axis (the Haar wavelet); kernels odd.
        deep_supervision: return the logits of every decoder level, highest resolution first.
        deep_supervision_heads: build the 1 x 1 heads of levels 1 .. S - 2 (the paper has none).
        ed_channels: 'input' (the ED output has the input's channels, the paper) or 'classes'.
        output_layer: 'pointwise' (1 x 1 convolution to the logits) or 'paper' (clamp(w c^, 0, 1), binary).
        output_bias: bias of the output layer (the paper has none).
        shrinkage_leaks: (l0, l1) of every shrinkage; (0, 0) is eq. (18), (0.001, 0.01) the authors' code.
        padding_mode: of every convolution ('replicate' in the authors' code).
    """

    def __init__(
        self,
        input_channels: int,
        n_stages: int,
        features_per_stage: int | Sequence[int],
        conv_op: type[_ConvNd],
        kernel_sizes: int | Sequence,
        strides: int | Sequence,
        num_classes: int,
        *,
        deep_supervision: bool = False,
        deep_supervision_heads: bool = True,
        ed_channels: str = "input",
        output_layer: str = "pointwise",
        output_bias: bool = True,
        shrinkage_leaks: Sequence[float] = (0.0, 0.0),
        padding_mode: str = "replicate",
    ) -> None:
        super().__init__()
        check_integer("n_stages", n_stages, minimum=2, meaning="the SUM's number of stages (depth + 1)", example=5)
        features = stage_features(features_per_stage, n_stages)
        check_choice("ed_channels", ed_channels, ED_CHANNELS, "input")
        check_choice("output_layer", output_layer, OUTPUT_LAYERS, "pointwise")
        check_choice("padding_mode", padding_mode, PADDING_MODES, "replicate")
        check_flag("output_bias", output_bias)
        check_flag("deep_supervision_heads", deep_supervision_heads)
        leaks = _leaks(shrinkage_leaks)
        kernels, stride_list = planned_kernels_and_strides(conv_op, kernel_sizes, strides, n_stages)
        _check_topology(kernels, stride_list)
        ed_width = input_channels if ed_channels == "input" else num_classes
        if output_layer == "paper" and num_classes != 2:
            raise invalid("output_layer", output_layer, f"the paper's output is one foreground map, for binary tasks "
                          f"(2 classes), but this dataset has {num_classes}", "'pointwise'")

        conv = _ConvFactory(conv_op, padding_mode)
        self.spatial_dims = convert_conv_op_to_dim(conv_op)
        self.kernel_sizes = kernels
        self.strides = stride_list
        self.size_divisor = size_divisor(stride_list)
        self.encoder = SUMEncoder(conv, input_channels, features, kernels, stride_list, leaks)
        self.decoder = SUMDecoder(conv, ed_width, features, kernels, stride_list, num_classes, leaks, deep_supervision,
                                  deep_supervision_heads)
        self.output_layer = (
            conv_op(ed_width, num_classes, kernel_size=1, bias=output_bias) if output_layer == "pointwise"
            else PaperOutputLayer(conv_op, ed_width, bias=output_bias)
        )

    def _decoder_outputs(self, x: Tensor) -> list[Tensor]:
        check_input_size(x, self.spatial_dims, self.size_divisor, "SUM")
        return self.decoder(*self.encoder(x))

    def encoder_decoder(self, x: Tensor) -> Tensor:
        """The ED output c^ (before Omega) at the shrinkages' current alpha (see ``shrinkage_scale``)."""
        return self._decoder_outputs(x)[-1]

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        outputs = self._decoder_outputs(x)
        logits = self.output_layer(outputs[-1])
        if self.decoder.deep_supervision:
            return [logits, *self.decoder.auxiliary_logits(outputs)]
        return with_idle_parameters_in_graph(logits, self.decoder.heads)


def _leaks(value: Any) -> tuple[float, float]:
    if (not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1 for v in value)):
        raise invalid("shrinkage_leaks", value, "two negative slopes in [0, 1): (0, 0) is eq. (18), the authors' "
                      "code uses (0.001, 0.01)", "[0.0, 0.0]")
    return float(value[0]), float(value[1])


def _check_topology(kernels: list[tuple[int, ...]], strides: list[tuple[int, ...]]) -> None:
    if any(k % 2 == 0 or k < 1 for kernel in kernels for k in kernel):
        raise invalid("kernel_sizes", kernels, "the SUM's 'same' convolutions need odd kernels", "3")
    if any(s not in (1, 2) for stride in strides for s in stride):
        raise invalid("strides", strides, "the Haar wavelet resamples by 1 or 2 per axis", "[[1, 1], [2, 2], [2, 2]]")
    if any(s != 1 for s in strides[0]):
        raise invalid("strides", strides, "the first stage must keep the input resolution", "[[1, 1], [2, 2], [2, 2]]")
