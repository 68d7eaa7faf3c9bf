"""Deconver: papers/deconver.md section III.C (Fig. 1) with the blocks of section III.D."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dynamic_network_architectures.building_blocks.helper import convert_conv_op_to_dim
from torch import nn
from torch.nn.modules.conv import _ConvNd

from nnunet_deconver.architectures.hyperparameter_checks import (
    check_divides_every_stage,
    check_flag,
    check_integer,
    check_some_branch,
    per_axis,
)
from nnunet_deconver.architectures.registry import register_architecture
from nnunet_deconver.architectures.unet_scaffold import StageSpec, UNetScaffold, stage_features
from nnunet_deconver.blocks.deconver_block import DeconverBlock

# The NDC kernel the paper found best per dimensionality (section IV.B-C): 3x3x3 in 3-D (ISLES'22,
# BraTS'23), 5x5 in 2-D (GlaS, FIVES). The trainers use it on nnU-Net's plans.
DEFAULT_NDC_KERNEL_SIZE: dict[int, int] = {2: 5, 3: 3}


def ndc_kernel_for_stage(kernel_size: int | Sequence[int], conv_kernel_size: tuple[int, ...]) -> tuple[int, ...]:
    """NDC filter size at a stage: a scalar size applies to the axes where the plans convolve.

    nnU-Net plans kernel size 1 along an axis whose spacing is much coarser (e.g. (1, 3, 3) for thick
    slices); the NDC filter follows that choice. A per-axis ``kernel_size`` is used as given.
    """
    if isinstance(kernel_size, int):
        return tuple(kernel_size if k > 1 else 1 for k in conv_kernel_size)
    return tuple(kernel_size)


@register_architecture()
class DeconverUNet(UNetScaffold):
    """U-shaped Deconver built from nnU-Net plans quantities.

    Every hyper-parameter is checked before anything is built; a bad one raises a one-line
    ValueError naming it, its value and a valid example.

    Args (beyond :class:`UNetScaffold`'s topology arguments):
        ndc_kernel_size: odd NDC filter size (scalar: applied where the plans' kernel is > 1; or per axis).
        ratio: NDC source channel ratio R (eq. 7's source has R * C channels).
        groups: NDC groups G; ``None`` means G = channels of each stage.
        iterations: NDC multiplicative updates (eq. 3; the paper uses 1).
        mlp_ratio: MLP expansion alpha (eq. 5).
        use_mixer, use_mlp: block ablations (Table VIII).
        norm_affine: affine instance norms (the paper has none).
        mixer_input_bias: bias of each Deconv Mixer's input projection (eq. 6).
        **scaffold_options: :class:`UNetScaffold`'s options: deep_supervision, blocks_per_stage,
            blocks_per_decoder_stage (Deconver blocks per stage), dtc (DTC upsampling, papers/dtc.md),
            stem_bias, downsampling_bias, fusion_bias. The authors' code has no bias in the mixer's
            input projection, the stem or the fusion; the paper presets turn them off.
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
        ndc_kernel_size: int | Sequence[int] = 3,
        ratio: int = 4,
        groups: int | None = None,
        iterations: int = 1,
        mlp_ratio: int = 4,
        use_mixer: bool = True,
        use_mlp: bool = True,
        norm_affine: bool = False,
        mixer_input_bias: bool = True,
        **scaffold_options: Any,
    ) -> None:
        features = stage_features(features_per_stage, n_stages)
        spatial_dims = convert_conv_op_to_dim(conv_op)
        per_axis(
            "ndc_kernel_size", ndc_kernel_size, spatial_dims, valid=lambda k: k >= 1 and k % 2 == 1,
            rule="NDC kernels must be odd", example=f"3, 5 or {[1] + [3] * (spatial_dims - 1)}",
        )
        check_integer("ratio", ratio, minimum=1, meaning="the NDC source channel ratio R", example=4)
        if groups is not None:
            check_integer("groups", groups, minimum=1, meaning="the number of NDC groups G (None: G = C)", example=8)
            check_divides_every_stage("groups", groups, features, "the number of NDC groups G", preferred=8)
        check_integer("iterations", iterations, minimum=1, meaning="the number of NDC updates", example=1)
        check_integer("mlp_ratio", mlp_ratio, minimum=1, meaning="the MLP expansion alpha", example=4)
        check_some_branch("Deconver", {"use_mixer": use_mixer, "use_mlp": use_mlp})
        check_flag("norm_affine", norm_affine)
        check_flag("mixer_input_bias", mixer_input_bias)

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
                mixer_input_bias=mixer_input_bias,
            )

        super().__init__(
            input_channels, n_stages, features_per_stage, conv_op, kernel_sizes, strides, num_classes,
            block_factory=block_factory, **scaffold_options,
        )

