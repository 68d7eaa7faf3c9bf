"""Deconver block: papers/deconver.md section III.D, eq. (4)."""

from __future__ import annotations

from collections.abc import Sequence

from dynamic_network_architectures.building_blocks.helper import get_matching_instancenorm
from torch import nn
from torch.nn.modules.conv import _ConvNd

from nnunet_deconver.blocks.deconv_mixer import DeconvMixer
from nnunet_deconver.blocks.mlp import PointwiseMLP
from nnunet_deconver.blocks.residual_branches import ResidualBranches


class DeconverBlock(ResidualBranches):
    """Z = DeconvMixer(IN(X)) + X;  Y = MLP(IN(Z)) + Z  (eq. 4), IN = InstanceNorm.

    Either sub-module can be switched off for the paper's Table VIII ablation.

    Args:
        channels: C.
        conv_op: nn.Conv2d or nn.Conv3d (nn.Conv1d works too).
        kernel_size: odd NDC filter size (scalar or per axis).
        ratio: NDC source channel ratio R.
        groups: NDC groups G (``None``: G = C).
        iterations: NDC multiplicative updates.
        mlp_ratio: MLP expansion factor alpha.
        use_mixer: keep the Deconv Mixer branch.
        use_mlp: keep the MLP branch.
        norm_affine: learnable scale and shift in the instance norms (the paper has none).
        mixer_input_bias: bias of the Deconv Mixer's input projection (see :class:`DeconvMixer`).
    """

    def __init__(
        self,
        channels: int,
        conv_op: type[_ConvNd],
        *,
        kernel_size: int | Sequence[int] = 3,
        ratio: int = 4,
        groups: int | None = None,
        iterations: int = 1,
        mlp_ratio: int = 4,
        use_mixer: bool = True,
        use_mlp: bool = True,
        norm_affine: bool = False,
        mixer_input_bias: bool = True,
    ) -> None:
        super().__init__()
        if not (use_mixer or use_mlp):
            raise ValueError("A Deconver block needs the Deconv Mixer, the MLP or both; both were disabled.")
        norm_op = get_matching_instancenorm(conv_op)
        self.mixer = (
            nn.Sequential(
                norm_op(channels, affine=norm_affine),
                DeconvMixer(
                    channels, conv_op, kernel_size=kernel_size, ratio=ratio, groups=groups, iterations=iterations,
                    input_bias=mixer_input_bias,
                ),
            )
            if use_mixer
            else None
        )
        self.mlp = (
            nn.Sequential(norm_op(channels, affine=norm_affine), PointwiseMLP(channels, conv_op, expansion=mlp_ratio))
            if use_mlp
            else None
        )

    def branches(self) -> list[nn.Module]:
        return [branch for branch in (self.mixer, self.mlp) if branch is not None]
