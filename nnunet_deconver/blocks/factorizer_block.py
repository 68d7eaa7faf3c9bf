"""Factorizer block: papers/factorizer.md section 3.3, eq. (4)-(5), Fig. 2(a)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from torch.nn.modules.conv import _ConvNd

from nnunet_deconver.blocks.mlp import PointwiseMLP
from nnunet_deconver.blocks.residual_branches import ResidualBranches
from nnunet_deconver.blocks.wrapped_nmf import WrappedNMF
from nnunet_deconver.layers.channel_layer_norm import ChannelLayerNorm
from nnunet_deconver.layers.matricize import MatricizeKind
from nnunet_deconver.layers.nmf import Solver


class FactorizerBlock(ResidualBranches):
    """Y = WrappedNMF(LN(X)) + X;  Z = MLP(LN(Y)) + Y  (eq. 4), LN = per-voxel LayerNorm over channels.

    Either branch can be switched off for the paper's Table 3 ablation.

    Args:
        channels: C.
        conv_op: nn.Conv2d or nn.Conv3d.
        matricize, head_dim, window, rank, iterations, solver: see :class:`WrappedNMF`.
        mlp_ratio: inner width of the MLP over C (2 in the paper's BraTS model, 4 in its ISLES'22 one).
        use_nmf, use_mlp: keep the Wrapped NMF / MLP branch.
    """

    def __init__(
        self,
        channels: int,
        conv_op: type[_ConvNd],
        *,
        matricize: MatricizeKind = "swin",
        head_dim: int = 8,
        window: int | Sequence[int] = 8,
        rank: int = 1,
        iterations: int = 5,
        solver: Solver = "hals",
        mlp_ratio: int = 2,
        use_nmf: bool = True,
        use_mlp: bool = True,
    ) -> None:
        super().__init__()
        if not (use_nmf or use_mlp):
            raise ValueError("A Factorizer block needs the Wrapped NMF, the MLP or both; both were disabled.")
        self.nmf_branch = (
            nn.Sequential(
                ChannelLayerNorm(channels),
                WrappedNMF(
                    channels, conv_op, matricize=matricize, head_dim=head_dim, window=window, rank=rank,
                    iterations=iterations, solver=solver,
                ),
            )
            if use_nmf
            else None
        )
        self.mlp_branch = (
            nn.Sequential(ChannelLayerNorm(channels), PointwiseMLP(channels, conv_op, expansion=mlp_ratio))
            if use_mlp
            else None
        )

    def branches(self) -> list[nn.Module]:
        return [branch for branch in (self.nmf_branch, self.mlp_branch) if branch is not None]
