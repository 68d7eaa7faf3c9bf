"""Differentiable nonnegative matrix factorization: papers/factorizer.md section 3.4.2.

X ~= F G^T (eq. 9) with F >= 0 of size M x R and G >= 0 of size N x R, fitted by T outer iterations
of a block coordinate descent on ||X - F G^T||^2 (eq. 10-11):

* MU, Algorithm 1: F <- F * (X G) / (F G^T G),  G <- G * (X^T F) / (G F^T F);
* HALS, Algorithm 2 / eq. (13): column by column, f_r <- max(0, (A[:, r] - sum_{l != r} B[l, r] f_l) / ||g_r||^2)
  with A = X G, B = G^T G, then the same for G with A = X^T F, B = F^T F.

For R = 1 both reduce to eq. (14): f <- X g / ||g||^2, g <- X^T f / ||f||^2. ``eps`` is added to every
denominator, so an all-zero matrix gives all-zero factors instead of 0/0. Gradients flow through all
iterations (plain autograd; every step is a matrix product or an elementwise operation). The layer
outputs the reconstruction F G^T.

Scale. The iterations run on X / s, s = max(X) per matrix, and F takes s back. They start from
(F0 / s, G0) for HALS, whose update subtracts B F from X G (F is in the units of X), and from
(F0, G0) for MU, which is homogeneous of degree 0 in F. This equals Algorithm 1 / 2 on X itself
from (F0, G0), except that eps is added to each denominator in that denominator's own unit: eps for
HALS' ||g_r||^2 and the first MU step's F0 G^T G, s eps for MU's later F G^T G, s^2 eps for the
denominators of the G updates. So eps is relative to the data, and no product of X over- or
underflows, whatever its magnitude. MU and R = 1 are scale-equivariant (NMF(aX) = a NMF(X)); HALS
with R >= 2 is not, as Algorithm 2 from a fixed start is not: for max(X) < 1 its first update can
drive columns of F to zero, all but the last for max(X) << 1 (for tiny max(X) through a product
B F0 / s beyond the float range, whose -inf clamps to the same zeros). s is a constant for
autograd: the gradient is that of Algorithm 1 / 2 with eps fixed at its value for this input.

Initialisation. F and G start from U(0, 1) values drawn once per factor size from a generator with a
fixed seed, shared by every matrix of a batch: the same input always gives the same output, and the
forward pass consumes no random state (training, validation and inference stay reproducible and
independent of each other). ``column_mask`` zeros the initial rows of G for padded columns; such
columns of X are zero, so their rows of G stay zero in every update and the factorization of the
padded matrix equals that of the matrix without them.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from nnunet_deconver.layers.compute import autocast_disabled, compute_dtype, is_fake

Solver = Literal["mu", "hals"]
SOLVERS: tuple[str, ...] = ("mu", "hals")

_INIT_SEEDS = {"F": 0x5EED_F, "G": 0x5EED_6}
_INIT_CACHE_SIZE = 16
_init_cache: dict[tuple, Tensor] = {}


def initial_factor(rows: int, rank: int, which: Literal["F", "G"], like: Tensor) -> Tensor:
    """U(0, 1) initial factor of shape (rows, rank), the same for every call with the same arguments.

    Drawn on the CPU in float64 from a generator seeded per factor, then cast and moved to ``like``'s
    dtype and device; a small cache keeps the last few so that repeated forward passes copy nothing.
    Under torch.compile the draw is an opaque custom op: the graph has no break, so it stays one
    static-shape graph (a break here made the code after it recompile per layer with dynamic shapes,
    which inductor failed to lower).
    """
    if torch.compiler.is_compiling():
        return _initial_factor_op(like.detach(), rows, rank, which)
    if is_fake(like):  # shapes only (profiling): nothing to draw, nothing to cache across fake modes
        return like.new_empty(rows, rank)
    return _cached_initial_factor(rows, rank, which, like)


def _cached_initial_factor(rows: int, rank: int, which: str, like: Tensor) -> Tensor:
    key = (rows, rank, which, like.dtype, like.device)
    cached = _init_cache.get(key)
    if cached is None:
        # A normal tensor even when first drawn under torch.inference_mode (nnU-Net's predictor):
        # an inference tensor could not be saved for backward by a later training step.
        with torch.inference_mode(False):
            generator = torch.Generator().manual_seed(_INIT_SEEDS[which])
            cached = torch.rand(rows, rank, generator=generator, dtype=torch.float64).to(like.device, like.dtype)
        if len(_init_cache) >= _INIT_CACHE_SIZE:
            _init_cache.pop(next(iter(_init_cache)))
        _init_cache[key] = cached
    return cached


@torch.library.custom_op("nnunet_deconver::nmf_initial_factor", mutates_args=())
def _initial_factor_op(like: Tensor, rows: int, rank: int, which: str) -> Tensor:
    return _cached_initial_factor(rows, rank, which, like).clone()


@_initial_factor_op.register_fake
def _(like: Tensor, rows: int, rank: int, which: str) -> Tensor:
    return like.new_empty(rows, rank)


def _mu_update(f: Tensor, a: Tensor, b: Tensor, eps: float) -> Tensor:
    """MU update of F for X ~= F G^T given A = X G and B = G^T G (Algorithm 1, line 3)."""
    return f * a / (f @ b + eps)


def _hals_update(f: Tensor, a: Tensor, b: Tensor, eps: float) -> Tensor:
    """HALS sweep over the columns of F given A = X G and B = G^T G (Algorithm 2, lines 3-5; eq. 13)."""
    columns = list(f.unbind(-1))
    for r in range(len(columns)):
        others = sum(b[..., l, r, None] * columns[l] for l in range(len(columns)) if l != r)
        columns[r] = ((a[..., r] - others) / (b[..., r, r, None] + eps)).clamp_min(0)
    return torch.stack(columns, dim=-1)


_UPDATES = {"mu": _mu_update, "hals": _hals_update}


def check_nmf_settings(rank: int | None = None, iterations: int | None = None, solver: str | None = None) -> None:
    """Refuse an unknown solver, rank < 1 or iterations < 0 (``None`` is not checked).

    Raises:
        ValueError: one line naming the bad setting.
    """
    if solver is not None and solver not in _UPDATES:
        raise ValueError(f"Unknown NMF solver {solver!r}; choose one of {SOLVERS}.")
    if (rank is not None and rank < 1) or (iterations is not None and iterations < 0):
        raise ValueError(f"NMF needs rank >= 1 and iterations >= 0, got rank={rank}, iterations={iterations}.")


def nmf(
    x: Tensor,
    rank: int = 1,
    iterations: int = 5,
    solver: Solver = "hals",
    eps: float = 1e-8,
    column_mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Factor nonnegative matrices X (..., M, N) into F (..., M, R) and G (..., N, R), eq. (9)-(14).

    Args:
        x: nonnegative matrices; any leading batch axes.
        rank: R.
        iterations: outer iterations T (each updates F, then G).
        solver: "mu" (Algorithm 1) or "hals" (Algorithm 2).
        eps: added to every denominator.
        column_mask: optional (..., N) mask broadcastable against x's batch axes; zero marks padded
            columns, whose rows of G start (and stay) at zero.

    Raises:
        ValueError: unknown solver, rank < 1 or iterations < 0.
    """
    check_nmf_settings(rank, iterations, solver)
    update = _UPDATES[solver]
    batch_shape, (rows, columns) = x.shape[:-2], x.shape[-2:]
    # One contiguous 3-D batch: bmm then reads X in place at every product (no per-product reshape copies).
    x = x.reshape(-1, rows, columns).contiguous()
    g = initial_factor(columns, rank, "G", x)
    if column_mask is not None:
        g = g * column_mask.to(x.dtype).unsqueeze(-1)
    g = g.expand(*batch_shape, columns, rank).reshape(-1, columns, rank)
    # Factorize X / s, s = max(X) per matrix, without forming it (the products are scaled instead), from
    # F0 / s for HALS and F0 for MU, and give s back to F (see the module docstring).
    scale = x.detach().amax(dim=(1, 2), keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
    f = initial_factor(rows, rank, "F", x).expand(x.shape[0], rows, rank)
    if solver == "hals":
        f = f / scale
    inverse = scale.reciprocal()
    for _ in range(iterations):
        f = update(f, torch.bmm(x, g) * inverse, torch.bmm(g.transpose(1, 2), g), eps)
        # X^T F as (F^T X)^T: X is read in its own layout, never copied transposed.
        xt_f = torch.bmm(f.transpose(1, 2), x).transpose(1, 2) * inverse
        g = update(g, xt_f, torch.bmm(f.transpose(1, 2), f), eps)
    return (f * scale).reshape(*batch_shape, rows, rank), g.reshape(*batch_shape, columns, rank)


class NMF(nn.Module):
    """NMF layer: returns the low-rank reconstruction F G^T of nonnegative matrices (section 3.4.2).

    Computes in float32 even under autocast (float64 stays float64). ``rank``, ``iterations`` and
    ``solver`` are plain attributes, so they can be changed on a trained model (section 4.5).

    Args:
        rank: R (the paper trains with 1).
        iterations: T (the paper trains with 5).
        solver: "hals" (the paper's choice) or "mu"; identical for R = 1.
        eps: added to every denominator.
    """

    def __init__(self, rank: int = 1, iterations: int = 5, solver: Solver = "hals", eps: float = 1e-8) -> None:
        super().__init__()
        check_nmf_settings(solver=solver)
        self.rank = rank
        self.iterations = iterations
        self.solver = solver
        self.eps = eps

    def factorize(self, x: Tensor, column_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(F, G) of ``x`` in the compute precision."""
        with autocast_disabled(x):
            return nmf(x.to(compute_dtype(x)), self.rank, self.iterations, self.solver, self.eps, column_mask)

    def forward(self, x: Tensor, column_mask: Tensor | None = None) -> Tensor:
        f, g = self.factorize(x, column_mask)
        with autocast_disabled(x):  # the reconstruction F G^T in the compute precision too
            return (f @ g.transpose(-1, -2)).to(x.dtype)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, iterations={self.iterations}, solver={self.solver!r}"
