"""Wrapped NMF module: papers/factorizer.md section 3.4, eq. (6), Fig. 2(b)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd

from nnunet_deconver.layers.matricize import MatricizeKind, Matricizer
from nnunet_deconver.layers.nmf import NMF, Solver


class WrappedNMF(nn.Module):
    """PointwiseConv -> Matricize -> ReLU -> NMF -> Dematricize -> PointwiseConv, eq. (6).

    ``nmf_enabled = False`` short-circuits the NMF layer (it becomes the identity), the paper's
    inference-time ablation of section 4.5; Matricize and Dematricize then cancel and are skipped.

    Args:
        channels: C (input = output width).
        conv_op: nn.Conv2d or nn.Conv3d.
        matricize: "global", "local" or "swin".
        head_dim: E, channels per matrix.
        window: P per axis for local / swin.
        rank, iterations, solver: the NMF layer's R, T and solver.
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
    ) -> None:
        super().__init__()
        if channels % head_dim:
            raise ValueError(f"Head dimension E={head_dim} does not divide the stage width {channels}.")
        self.matricizer = Matricizer(matricize, head_dim=head_dim, window=window)
        self.project_in = conv_op(channels, channels, kernel_size=1, bias=False)
        self.activation = nn.ReLU()
        self.nmf = NMF(rank=rank, iterations=iterations, solver=solver)
        self.project_out = conv_op(channels, channels, kernel_size=1)
        self.nmf_enabled = True

    def forward(self, x: Tensor) -> Tensor:
        projected = self.project_in(x)
        if not self.nmf_enabled:
            return self.project_out(self.activation(projected))
        layout = self.matricizer.matricize(projected)
        reconstruction = self.nmf(self.activation(layout.matrices), layout.column_mask)
        return self.project_out(self.matricizer.dematricize(reconstruction, layout))

    def spatial_components(self, x: Tensor) -> Tensor:
        """The NMF's spatial factors G mapped back to space: (B, (C/E) * R, *spatial) (Fig. 6).

        Channel h * R + r is component r of head h; windows (and, for swin, both window sets,
        averaged) are put back where they came from, as Dematricize does with the reconstruction.
        """
        layout = self.matricizer.matricize(self.project_in(x))
        _, g = self.nmf.factorize(self.activation(layout.matrices), layout.column_mask)
        return self.matricizer.dematricize(g.transpose(-1, -2), layout)
