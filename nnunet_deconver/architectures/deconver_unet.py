"""Deconver: papers/deconver.md section III.C (Fig. 1) with the blocks of section III.D."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn
from torch.nn.modules.conv import _ConvNd

from nnunet_deconver.architectures.dtc_upsampling import dtc_upsampler_factory
from nnunet_deconver.architectures.unet_scaffold import StageSpec, UNetScaffold
from nnunet_deconver.blocks.deconver_block import DeconverBlock


def ndc_kernel_for_stage(kernel_size: int | Sequence[int], conv_kernel_size: tuple[int, ...]) -> tuple[int, ...]:
    """NDC filter size at a stage: a scalar size applies to the axes where the plans convolve.

    nnU-Net plans kernel size 1 along an axis whose spacing is much coarser (e.g. (1, 3, 3) for thick
    slices); the NDC filter follows that choice. A per-axis ``kernel_size`` is used as given.
    """
    if isinstance(kernel_size, int):
        return tuple(kernel_size if k > 1 else 1 for k in conv_kernel_size)
    return tuple(kernel_size)


class DeconverUNet(UNetScaffold):
    """U-shaped Deconver built from nnU-Net plans quantities.

    Args (beyond :class:`UNetScaffold`'s topology arguments):
        ndc_kernel_size: NDC filter size (scalar: applied where the plans' kernel is > 1; or per axis).
        ratio: NDC source channel ratio R.
        groups: NDC groups G; ``None`` means G = channels of each stage.
        iterations: NDC multiplicative updates.
        mlp_ratio: MLP expansion alpha.
        use_mixer, use_mlp: block ablations (Table VIII).
        norm_affine: affine instance norms (the paper has none).
        dtc: DTC settings to upsample with deformable transposed convolutions (papers/dtc.md);
            ``None`` keeps plain transposed convolutions.
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
        deep_supervision: bool = False,
        ndc_kernel_size: int | Sequence[int] = 3,
        ratio: int = 4,
        groups: int | None = None,
        iterations: int = 1,
        mlp_ratio: int = 4,
        blocks_per_stage: int | Sequence[int] = 1,
        blocks_per_decoder_stage: int | Sequence[int] = 1,
        use_mixer: bool = True,
        use_mlp: bool = True,
        norm_affine: bool = False,
        dtc: Mapping[str, Any] | None = None,
    ) -> None:
        def block_factory(spec: StageSpec) -> nn.Module:
            return DeconverBlock(
                spec.channels,
                conv_op,
                kernel_size=ndc_kernel_for_stage(ndc_kernel_size, spec.conv_kernel_size),
                ratio=ratio,
                groups=groups,
                iterations=iterations,
                mlp_ratio=mlp_ratio,
                use_mixer=use_mixer,
                use_mlp=use_mlp,
                norm_affine=norm_affine,
            )

        super().__init__(
            input_channels, n_stages, features_per_stage, conv_op, kernel_sizes, strides, num_classes,
            deep_supervision, block_factory, blocks_per_stage, blocks_per_decoder_stage,
            None if dtc is None else dtc_upsampler_factory(dtc),
        )
