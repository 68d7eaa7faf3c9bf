"""The U-shaped scaffold every family plugs its blocks into (papers/deconver.md section III.C, Fig. 1).

Encoder: stem convolution, then per stage a strided convolution (kernel = stride, so anisotropic
strides such as (1, 2, 2) work) followed by the family's blocks. Decoder: per stage an upsampler
(transposed convolution by the same stride unless a family supplies another, e.g. DTC), skip
concatenation, a pointwise convolution back to the stage width, the family's blocks, and a
pointwise segmentation head. Deep supervision follows nnU-Net's contract: ``decoder.deep_supervision``
toggles between one full-resolution logit map and a list of maps, highest resolution first.

The papers' reference code builds the stem (both papers), the downsampling convolutions
(Factorizer) and the skip fusion (both) without biases; ``stem_bias``, ``downsampling_bias`` and
``fusion_bias`` choose (all True by default, the networks trained so far).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from dynamic_network_architectures.building_blocks.helper import (
    convert_conv_op_to_dim,
    get_matching_convtransp,
    maybe_convert_scalar_to_list,
)
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd

from nnunet_deconver.architectures.activation_checkpointing import (
    DEFAULT_CHECKPOINTING,
    StageSequence,
    check_checkpointing_mode,
    checkpoints_level,
)
from nnunet_deconver.architectures.dtc_settings import UpsamplerFactory, dtc_upsampler_factory
from nnunet_deconver.architectures.hyperparameter_checks import (
    check_flag,
    check_integer,
    invalid,
    is_integer,
    per_stage,
)
from nnunet_deconver.architectures.idle_parameters import with_idle_parameters_in_graph


@dataclass(frozen=True)
class StageSpec:
    """What a family needs to know to build the blocks of one stage.

    Attributes:
        level: resolution level, 0 = full resolution, n_stages - 1 = bottleneck.
        channels: width of the stage.
        conv_kernel_size: the plans' convolution kernel at this level (1 on an axis nnU-Net keeps local).
        in_decoder: whether the blocks sit in the decoder.
    """

    level: int
    channels: int
    conv_kernel_size: tuple[int, ...]
    in_decoder: bool


BlockFactory = Callable[[StageSpec], nn.Module]


def _integers_per_stage(key: str, value: int | Sequence[int], count: int, minimum: int, example: str) -> list[int]:
    values = per_stage(key, value, count, example)
    if not all(is_integer(v) and v >= minimum for v in values):
        raise invalid(key, value, f"every stage's entry must be an integer >= {minimum}", example)
    return values


def stage_features(features_per_stage: int | Sequence[int], n_stages: int) -> list[int]:
    """The width of every stage, refusing a wrong count or a width < 1 (one-line errors)."""
    example = str([32 * 2**level for level in range(n_stages)])
    return _integers_per_stage("features_per_stage", features_per_stage, n_stages, 1, example)


def planned_kernels_and_strides(
    conv_op: type[_ConvNd], kernel_sizes: int | Sequence, strides: int | Sequence, n_stages: int
) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """The plans' kernel and stride of every stage, one entry per axis (a scalar applies to every axis or stage)."""
    planned_strides = per_stage("strides", strides, n_stages, str([1] + [2] * (n_stages - 1)))
    planned_kernels = per_stage("kernel_sizes", kernel_sizes, n_stages, "3")
    kernels = [tuple(maybe_convert_scalar_to_list(conv_op, k)) for k in planned_kernels]
    return kernels, [tuple(maybe_convert_scalar_to_list(conv_op, s)) for s in planned_strides]


def size_divisor(strides: list[tuple[int, ...]]) -> tuple[int, ...]:
    """The product of the stages' strides per axis: every input size must be a multiple of it."""
    return tuple(math.prod(axis) for axis in zip(*strides))


def check_input_size(x: Tensor, spatial_dims: int, divisor: tuple[int, ...], network: str) -> None:
    """Refuse an input whose spatial size the strides do not divide (one line naming the divisor)."""
    spatial = tuple(x.shape[2:])
    if len(spatial) != spatial_dims or any(n % d for n, d in zip(spatial, divisor)):
        raise ValueError(
            f"Input of spatial size {spatial} cannot pass this {spatial_dims}-D {network}: every axis must be "
            f"a multiple of {divisor} (the product of the plans' strides). nnU-Net's patch sizes are; pad other "
            f"inputs to such a size."
        )


class UNetEncoder(nn.Module):
    """Stem plus one (downsampling, blocks) stage per resolution level."""

    def __init__(
        self,
        input_channels: int,
        features: list[int],
        conv_op: type[_ConvNd],
        kernel_sizes: list[tuple[int, ...]],
        strides: list[tuple[int, ...]],
        block_factory: BlockFactory,
        blocks_per_stage: list[int],
        *,
        stem_bias: bool,
        downsampling_bias: bool,
        activation_checkpointing: str,
    ) -> None:
        super().__init__()
        self.stem = conv_op(
            input_channels, features[0], kernel_size=kernel_sizes[0], padding=[k // 2 for k in kernel_sizes[0]],
            bias=stem_bias,
        )
        stages = []
        for level, (channels, kernel, stride) in enumerate(zip(features, kernel_sizes, strides)):
            layers: list[nn.Module] = []
            if level > 0:
                layers.append(
                    conv_op(features[level - 1], channels, kernel_size=stride, stride=stride, bias=downsampling_bias)
                )
            elif any(s != 1 for s in stride):
                raise ValueError(f"The first stage must not downsample; plans give stride {stride} there.")
            spec = StageSpec(level, channels, kernel, in_decoder=False)
            first_block = len(layers)
            layers += [block_factory(spec) for _ in range(blocks_per_stage[level])]
            stages.append(StageSequence(
                layers, first_block=first_block, checkpointed=checkpoints_level(activation_checkpointing, level)
            ))
        self.stages = nn.ModuleList(stages)

    def forward(self, x: Tensor) -> list[Tensor]:
        skips = []
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips


class UNetDecoder(nn.Module):
    """Upsample, concatenate the skip, fuse to the stage width, blocks, segmentation head."""

    def __init__(
        self,
        features: list[int],
        conv_op: type[_ConvNd],
        kernel_sizes: list[tuple[int, ...]],
        strides: list[tuple[int, ...]],
        num_classes: int,
        block_factory: BlockFactory,
        blocks_per_stage: list[int],
        upsampler_factory: UpsamplerFactory,
        deep_supervision: bool,
        *,
        fusion_bias: bool,
        activation_checkpointing: str,
    ) -> None:
        super().__init__()
        self.deep_supervision = deep_supervision
        upsamplers, fusions, stages, heads = [], [], [], []
        for level in reversed(range(len(features) - 1)):
            channels = features[level]
            upsampler = upsampler_factory(features[level + 1], channels, strides[level + 1])
            if hasattr(upsampler, "checkpointed"):  # DTC: keeps only its input, as the blocks do
                upsampler.checkpointed = checkpoints_level(activation_checkpointing, level)
            upsamplers.append(upsampler)
            fusions.append(conv_op(2 * channels, channels, kernel_size=1, bias=fusion_bias))
            spec = StageSpec(level, channels, kernel_sizes[level], in_decoder=True)
            stages.append(StageSequence(
                [block_factory(spec) for _ in range(blocks_per_stage[level])], first_block=0,
                checkpointed=checkpoints_level(activation_checkpointing, level),
            ))
            heads.append(conv_op(channels, num_classes, kernel_size=1))
        self.upsamplers = nn.ModuleList(upsamplers)
        self.fusions = nn.ModuleList(fusions)
        self.stages = nn.ModuleList(stages)
        self.heads = nn.ModuleList(heads)

    def forward(self, skips: list[Tensor]) -> Tensor | list[Tensor]:
        x = skips[-1]
        outputs = []
        last = len(self.stages) - 1
        for index, (upsample, fuse, stage, head) in enumerate(
            zip(self.upsamplers, self.fusions, self.stages, self.heads)
        ):
            x = stage(fuse(torch.cat((upsample(x), skips[-(index + 2)]), dim=1)))
            if self.deep_supervision or index == last:
                outputs.append(head(x))
        if not self.deep_supervision:
            return with_idle_parameters_in_graph(outputs[-1], self.heads[:-1])
        return outputs[::-1]


def _transposed_conv_factory(conv_op: type[_ConvNd]) -> UpsamplerFactory:
    transposed_op = get_matching_convtransp(conv_op)

    def factory(in_channels: int, out_channels: int, stride: tuple[int, ...]) -> nn.Module:
        return transposed_op(in_channels, out_channels, kernel_size=stride, stride=stride)

    return factory


class UNetScaffold(nn.Module):
    """Generic U-Net built from nnU-Net plans quantities; a family supplies ``block_factory``.

    A family's constructor takes its own hyper-parameters and passes every keyword option below
    (``deep_supervision`` ... ``fusion_bias``) through ``**scaffold_options``: they are declared
    here once, and the architecture registry accepts them for every family.

    Args:
        input_channels: image channels (modalities).
        n_stages: resolution levels (encoder stages).
        features_per_stage: width per level (or one width for all).
        conv_op: nn.Conv2d / nn.Conv3d, which fixes 2-D or 3-D.
        kernel_sizes: the plans' convolution kernel per level; used by the stem and passed to blocks.
        strides: downsampling stride per level (the first is all ones).
        num_classes: segmentation heads' output channels.
        deep_supervision: return one logit map per decoder stage, highest resolution first.
        block_factory: builds one block for a :class:`StageSpec`.
        blocks_per_stage: blocks per encoder level.
        blocks_per_decoder_stage: blocks per decoder level (levels 0 .. n_stages - 2).
        dtc: DTC settings (papers/dtc.md, see :mod:`dtc_settings`) to upsample with deformable
            transposed convolutions; ``None`` keeps transposed convolutions with kernel = stride.
        stem_bias, downsampling_bias, fusion_bias: biases of the stem, of the encoder's strided
            convolutions and of the decoder's skip-fusion pointwise convolutions.
        activation_checkpointing: 'off', 'selective' or 'full': which blocks recompute their
            activations in backward instead of keeping them (:mod:`activation_checkpointing`).
    """

    internal_arguments: ClassVar[frozenset[str]] = frozenset({"block_factory"})
    """Supplied by the family's constructor, never by a plans file."""

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
        block_factory: BlockFactory,
        deep_supervision: bool = False,
        blocks_per_stage: int | Sequence[int] = 1,
        blocks_per_decoder_stage: int | Sequence[int] = 1,
        dtc: Mapping[str, Any] | None = None,
        stem_bias: bool = True,
        downsampling_bias: bool = True,
        fusion_bias: bool = True,
        activation_checkpointing: str = DEFAULT_CHECKPOINTING,
    ) -> None:
        super().__init__()
        check_checkpointing_mode(activation_checkpointing)
        check_integer("n_stages", n_stages, minimum=2, meaning="a U-Net's number of stages", example=4)
        features = stage_features(features_per_stage, n_stages)
        biases = {"stem_bias": stem_bias, "downsampling_bias": downsampling_bias, "fusion_bias": fusion_bias}
        for key, value in biases.items():
            check_flag(key, value)
        kernels, stride_list = planned_kernels_and_strides(conv_op, kernel_sizes, strides, n_stages)
        encoder_blocks = _integers_per_stage("blocks_per_stage", blocks_per_stage, n_stages, 0, "1")
        decoder_blocks = _integers_per_stage("blocks_per_decoder_stage", blocks_per_decoder_stage, n_stages - 1, 0, "1")
        upsampler_factory = _transposed_conv_factory(conv_op) if dtc is None else dtc_upsampler_factory(dtc)

        self.spatial_dims = convert_conv_op_to_dim(conv_op)
        self.size_divisor = size_divisor(stride_list)
        self.encoder = UNetEncoder(
            input_channels, features, conv_op, kernels, stride_list, block_factory, encoder_blocks,
            stem_bias=stem_bias, downsampling_bias=downsampling_bias, activation_checkpointing=activation_checkpointing,
        )
        self.decoder = UNetDecoder(
            features, conv_op, kernels, stride_list, num_classes, block_factory, decoder_blocks,
            upsampler_factory, deep_supervision, fusion_bias=fusion_bias,
            activation_checkpointing=activation_checkpointing,
        )

    def parameter_count(self, *, heads: int | None = None) -> int:
        """Number of parameters, counting only the ``heads`` highest-resolution segmentation heads.

        ``None`` counts every head. The papers' reference code builds fewer heads than nnU-Net's deep
        supervision needs (one per decoder stage): Deconver one (the full-resolution logits),
        Factorizer three (deep supervision at the three highest resolutions, papers/factorizer.md
        section 3.2); ``heads=1`` / ``heads=3`` count as they do.
        """
        ignored = [] if heads is None else list(self.decoder.heads)[: max(len(self.decoder.heads) - heads, 0)]
        ignored_ids = {id(p) for head in ignored for p in head.parameters()}
        return sum(p.numel() for p in self.parameters() if id(p) not in ignored_ids)

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        check_input_size(x, self.spatial_dims, self.size_divisor, "U-Net")
        return self.decoder(self.encoder(x))
