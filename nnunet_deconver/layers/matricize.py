"""Matricize / Dematricize: papers/factorizer.md section 3.4.1 (eq. 7-8, Algorithm 3), 2-D and 3-D.

A batch of images (B, C, *spatial) becomes a batch of E x N matrices and back:

* Global: channel heads of E channels, all voxels as columns: (B, C/E, E, prod(spatial)).
* Local (eq. 7): non-overlapping windows of P voxels per axis; each window of each head is one
  E x P^d matrix: (B, C/E, n_windows, E, P^d).
* Shifted window (eq. 8): the local matrices of the input and of the input rolled by P/2 per axis,
  stacked on a leading axis of 2; Dematricize averages the two reconstructions after undoing the roll.

Sizes that are not multiples of the window are padded with zeros up to the next multiple, and
Dematricize crops the padding away. The :class:`Matricized` result carries a column mask (zero on
padded voxels) that :func:`~nnunet_deconver.layers.nmf.nmf` uses to keep the padded columns out of the
factorization, so a padded window is factorized exactly like the smaller window it contains. Along an
axis shorter than the window (deep stages of a U-Net), the window is that axis (no padding).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

MatricizeKind = Literal["global", "local", "swin"]
MATRICIZE_KINDS: tuple[str, ...] = ("global", "local", "swin")
_AXES = ("h", "w", "d")


@dataclass(frozen=True)
class Matricized:
    """Matrices of shape (..., E, N) and what Dematricize needs to restore (B, C, *spatial).

    Attributes:
        matrices: the batch of matrices.
        column_mask: (..., N) with zeros on padded columns, broadcastable against the matrices'
            batch axes; ``None`` when nothing was padded.
        spatial: the input's spatial size.
        window: the window per axis (empty for Global).
        shift: the roll per axis of the second window set (empty unless shifted window).
    """

    matrices: Tensor
    column_mask: Tensor | None
    spatial: tuple[int, ...]
    window: tuple[int, ...]
    shift: tuple[int, ...]


def _local_patterns(spatial_dims: int) -> tuple[str, str]:
    """einops patterns image -> windows and back, eq. (7)."""
    axes = _AXES[:spatial_dims]
    image = "b (g e) " + " ".join(f"(n{a} p{a})" for a in axes)
    windows = "b g (" + " ".join(f"n{a}" for a in axes) + ") e (" + " ".join(f"p{a}" for a in axes) + ")"
    return image, windows


def _window_sizes(spatial: Sequence[int], window: Sequence[int]) -> tuple[int, ...]:
    return tuple(min(p, n) for p, n in zip(window, spatial))


def _padding(spatial: Sequence[int], window: Sequence[int]) -> list[int]:
    """F.pad argument (last axis first) that pads each axis at its end up to a multiple of the window."""
    pads = [(-n) % p for n, p in zip(spatial, window)]
    return [amount for pad in reversed(pads) for amount in (0, pad)]


def _to_windows(x: Tensor, window: tuple[int, ...], head_dim: int) -> Tensor:
    padded = F.pad(x, _padding(x.shape[2:], window))
    image, windows = _local_patterns(len(window))
    sizes = {f"p{a}": p for a, p in zip(_AXES, window)}
    return rearrange(padded, f"{image} -> {windows}", e=head_dim, **sizes)


def _from_windows(matrices: Tensor, spatial: tuple[int, ...], window: tuple[int, ...]) -> Tensor:
    image, windows = _local_patterns(len(window))
    padded = [math.ceil(n / p) for n, p in zip(spatial, window)]
    sizes = {f"n{a}": n for a, n in zip(_AXES, padded)} | {f"p{a}": p for a, p in zip(_AXES, window)}
    x = rearrange(matrices, f"{windows} -> {image}", **sizes)
    return x[(..., *(slice(0, n) for n in spatial))]


def _window_column_mask(spatial: tuple[int, ...], window: tuple[int, ...], like: Tensor) -> Tensor | None:
    """(n_windows, P^d) mask of the real voxels of each window, or None if nothing is padded."""
    if all(n % p == 0 for n, p in zip(spatial, window)):
        return None
    ones = torch.ones((1, 1, *spatial), dtype=like.dtype, device=like.device)
    return _to_windows(ones, window, head_dim=1)[0, 0, :, 0, :]


class Matricizer:
    """Matricize and Dematricize of one kind for a head dimension E and a window P (per axis).

    Args:
        kind: "global", "local" or "swin" (shifted window).
        head_dim: E, channels per matrix; must divide the channel count.
        window: P for Local and shifted window (scalar or per axis); ignored by Global.
    """

    def __init__(self, kind: MatricizeKind, head_dim: int, window: int | Sequence[int] = 8) -> None:
        if kind not in MATRICIZE_KINDS:
            raise ValueError(f"Unknown matricize kind {kind!r}; choose one of {MATRICIZE_KINDS}.")
        if head_dim < 1:
            raise ValueError(f"The head dimension E must be positive, got {head_dim}.")
        self.kind = kind
        self.head_dim = head_dim
        self.window = window

    def _windows_for(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        window = (self.window,) * len(spatial) if isinstance(self.window, int) else tuple(self.window)
        if len(window) != len(spatial) or any(p < 1 for p in window):
            raise ValueError(f"Window {self.window!r} does not fit a {len(spatial)}-D input.")
        return _window_sizes(spatial, window)

    def matricize(self, x: Tensor) -> Matricized:
        """(B, C, *spatial) -> matrices (see the module docstring for their shapes)."""
        channels, spatial = x.shape[1], tuple(x.shape[2:])
        if channels % self.head_dim:
            raise ValueError(
                f"{channels} channels cannot be split into heads of E={self.head_dim}; choose a head dimension "
                f"that divides every stage width."
            )
        if self.kind == "global":
            matrices = rearrange(x, "b (g e) ... -> b g e (...)", e=self.head_dim)
            return Matricized(matrices, None, spatial, (), ())
        window = self._windows_for(spatial)
        mask = _window_column_mask(spatial, window, x)
        if self.kind == "local":
            return Matricized(_to_windows(x, window, self.head_dim), mask, spatial, window, ())
        shift = tuple(p // 2 for p in window)
        rolled = torch.roll(x, shifts=shift, dims=tuple(range(2, x.dim())))
        matrices = torch.stack((_to_windows(x, window, self.head_dim), _to_windows(rolled, window, self.head_dim)))
        return Matricized(matrices, mask, spatial, window, shift)

    def dematricize(self, matrices: Tensor, layout: Matricized) -> Tensor:
        """Inverse of :meth:`matricize` for matrices laid out like ``layout.matrices``.

        The row count may differ from E (e.g. the R rows of G^T, to map NMF components back to
        space); the result then has (C/E) * rows channels.
        """
        if self.kind == "global":
            return matrices.reshape(*matrices.shape[:-3], -1, *layout.spatial)
        if self.kind == "local":
            return _from_windows(matrices, layout.spatial, layout.window)
        regular = _from_windows(matrices[0], layout.spatial, layout.window)
        shifted = _from_windows(matrices[1], layout.spatial, layout.window)
        unrolled = torch.roll(shifted, shifts=tuple(-s for s in layout.shift), dims=tuple(range(2, shifted.dim())))
        return 0.5 * (regular + unrolled)
