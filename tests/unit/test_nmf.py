"""The NMF layer against papers/factorizer.md section 3.4.2 (eq. 9-14, Algorithms 1 and 2).

The references below are written from the paper's equations in float64 with explicit Python loops
over columns and entries; they use none of the package's code except its initial factors (which the
paper leaves open: "initialized with U(0, 1)"), so every comparison checks the package's vectorised
updates against an independent transcription of the algorithms.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import Tensor

from nnunet_deconver.layers.nmf import NMF, initial_factor, nmf

SOLVERS = ("mu", "hals")

# --------------------------------------------------------------------------------------------------
# Independent float64 references
# --------------------------------------------------------------------------------------------------


def ref_rank_one(x: Tensor, g: Tensor, iterations: int) -> tuple[Tensor, Tensor]:
    """Eq. (14): f <- X g / ||g||^2, g <- X^T f / ||f||^2 (vectors), T times."""
    f = None
    for _ in range(iterations):
        f = torch.stack([sum(x[i, j] * g[j] for j in range(x.shape[1])) for i in range(x.shape[0])]) / (g @ g)
        g = torch.stack([sum(x[i, j] * f[i] for i in range(x.shape[0])) for j in range(x.shape[1])]) / (f @ f)
    return f, g


def _hals_sweep(x: Tensor, f: Tensor, g: Tensor, eps: float = 0.0) -> Tensor:
    """Algorithm 2, lines 3-5 for F (call with X^T, G, F for lines 6-8): columns in order, each using
    the columns already updated in this sweep; ``eps`` added to ||g_r||^2 (0/0 -> 0 for a zero column)."""
    f = f.clone()
    a = x @ g
    b = g.T @ g
    rank = f.shape[1]
    for r in range(rank):
        numerator = a[:, r].clone()
        for ell in range(rank):
            if ell != r:
                numerator = numerator - b[ell, r] * f[:, ell]
        f[:, r] = torch.clamp(numerator / (g[:, r] @ g[:, r] + eps), min=0.0)
    return f


def ref_hals(x: Tensor, f: Tensor, g: Tensor, iterations: int, eps: float = 0.0) -> tuple[Tensor, Tensor]:
    for _ in range(iterations):
        f = _hals_sweep(x, f, g, eps)
        g = _hals_sweep(x.T, g, f, eps)
    return f, g


def ref_mu(x: Tensor, f: Tensor, g: Tensor, iterations: int, eps: float = 0.0) -> tuple[Tensor, Tensor]:
    """Algorithm 1 entry by entry: F[i, r] *= (X G)[i, r] / (F G^T G + eps)[i, r], then the same for G."""
    for _ in range(iterations):
        xg, fgg = x @ g, f @ (g.T @ g)
        f = torch.stack([torch.stack([f[i, r] * xg[i, r] / (fgg[i, r] + eps) for r in range(f.shape[1])])
                         for i in range(f.shape[0])])
        xf, gff = x.T @ f, g @ (f.T @ f)
        g = torch.stack([torch.stack([g[j, r] * xf[j, r] / (gff[j, r] + eps) for r in range(g.shape[1])])
                         for j in range(g.shape[0])])
    return f, g


REFERENCES = {"mu": ref_mu, "hals": ref_hals}


def initial_factors(rows: int, columns: int, rank: int) -> tuple[Tensor, Tensor]:
    like = torch.empty(0, dtype=torch.float64)
    return initial_factor(rows, rank, "F", like).clone(), initial_factor(columns, rank, "G", like).clone()


def random_nonnegative(rows: int, columns: int, seed: int, rank: int | None = None) -> Tensor:
    """Uniform noise, or (with ``rank``) a positive rank-``rank`` matrix plus a little noise."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(rows, columns, generator=generator, dtype=torch.float64)
    if rank is None:
        return noise
    a = torch.rand(rows, rank, generator=generator, dtype=torch.float64) + 0.1
    b = torch.rand(columns, rank, generator=generator, dtype=torch.float64) + 0.1
    return a @ b.T + 0.05 * noise


def error(x: Tensor, f: Tensor, g: Tensor) -> float:
    return torch.linalg.norm(x - f @ g.transpose(-1, -2)).item()


# --------------------------------------------------------------------------------------------------
# Updates against the references
# --------------------------------------------------------------------------------------------------


def test_initial_factors_are_u01_and_fixed() -> None:
    like = torch.empty(0, dtype=torch.float64)
    f = initial_factor(37, 3, "F", like)
    assert f.shape == (37, 3) and (f > 0).all() and (f < 1).all()
    assert torch.equal(f, initial_factor(37, 3, "F", like))
    assert not torch.equal(f, initial_factor(37, 3, "G", like))  # the two factors are not the same draw


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("iterations", [1, 3])
def test_rank_one_mu_and_hals_follow_eq_14(solver: str, iterations: int) -> None:
    """For R = 1 both solvers reduce to f <- Xg/||g||^2, g <- X^T f/||f||^2 (eq. 14)."""
    x = random_nonnegative(5, 9, seed=1)
    _, g0 = initial_factors(5, 9, 1)
    f_ref, g_ref = ref_rank_one(x, g0[:, 0], iterations)
    f, g = nmf(x, rank=1, iterations=iterations, solver=solver)
    torch.testing.assert_close(f[:, 0], f_ref, rtol=1e-7, atol=0)
    torch.testing.assert_close(g[:, 0], g_ref, rtol=1e-7, atol=0)


TINY_EPS = 1e-300
"""eps for comparisons with the references: resolves the 0/0 of a column the first HALS update zeroed
(small max(X)), negligible against every other denominator."""


@pytest.mark.parametrize("peak", [1e-3, 1.0, 7.0, 1e3])
@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("rank", [2, 3, 4])
def test_rank_r_updates_equal_the_algorithms_on_the_unscaled_matrix(solver: str, rank: int, peak: float) -> None:
    """Algorithm 1 (MU) and Algorithm 2 (HALS, sequential column updates) for R > 1 on X itself,
    max(X) = ``peak``, from the package's initial factors (float64): the package factorizes
    X / max(X) from F0 / max(X) (HALS), which must be the same up to round-off."""
    x = random_nonnegative(6, 11, seed=rank, rank=rank)
    x = x * (peak / x.max())
    f0, g0 = initial_factors(6, 11, rank)
    f_ref, g_ref = REFERENCES[solver](x, f0, g0, 4, TINY_EPS)
    f, g = nmf(x, rank=rank, iterations=4, solver=solver, eps=TINY_EPS)
    torch.testing.assert_close(f, f_ref, rtol=1e-9, atol=1e-12 * peak)
    torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-12)
    if solver == "hals" and peak != 1.0:  # not vacuous: starting from F0 * max(X) (as the scaled F0) differs
        f_scaled_start, _ = ref_hals(x, f0 * peak, g0, 4, TINY_EPS)
        assert not torch.allclose(f_scaled_start, f_ref, rtol=1e-3, atol=0)


def test_hals_updates_columns_sequentially_not_jacobi_style() -> None:
    """Guard for the reference above: a Jacobi-style HALS (all columns from the old F) would differ."""
    x = random_nonnegative(6, 11, seed=7, rank=3)
    f0, g0 = initial_factors(6, 11, 3)
    a, b = x @ g0, g0.T @ g0
    jacobi = torch.clamp((a - f0 @ b + f0 * torch.diag(b)) / torch.diag(b), min=0)
    sequential = _hals_sweep(x, f0, g0)
    assert not torch.allclose(jacobi, sequential)
    f, _ = nmf(x, rank=3, iterations=1, solver="hals")
    torch.testing.assert_close(f, sequential, rtol=1e-7, atol=1e-10)


def test_a_batch_is_factorized_matrix_by_matrix() -> None:
    xs = torch.stack([random_nonnegative(4, 10, seed=s) for s in range(6)]).reshape(2, 3, 4, 10)
    f, g = nmf(xs, rank=2, iterations=3, solver="hals")
    for i, j in itertools.product(range(2), range(3)):
        f_one, g_one = nmf(xs[i, j], rank=2, iterations=3, solver="hals")
        torch.testing.assert_close(f[i, j], f_one, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(g[i, j], g_one, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("rank", [1, 2, 3, 4])
def test_the_objective_never_increases(solver: str, rank: int) -> None:
    """Block coordinate descent (eq. 11): ||X - F G^T|| is non-increasing in T, and does decrease."""
    for seed, (rows, columns) in enumerate([(4, 30), (8, 12), (6, 50)]):
        x = random_nonnegative(rows, columns, seed=100 + seed, rank=None if seed % 2 else rank)
        errors = [error(x, *nmf(x, rank=rank, iterations=t, solver=solver)) for t in range(11)]
        for before, after in zip(errors, errors[1:]):
            assert after <= before * (1 + 1e-9), (solver, rank, seed, errors)
        assert errors[-1] < 0.9 * errors[0], errors


# --------------------------------------------------------------------------------------------------
# Differentiability
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("rank", [1, 2])
def test_gradcheck(solver: str, rank: int) -> None:
    """Autograd through all T iterations equals finite differences (float64, positive near-rank-R input)."""
    x = random_nonnegative(3, 6, seed=11, rank=rank).requires_grad_()
    layer = NMF(rank=rank, iterations=3, solver=solver)
    assert torch.autograd.gradcheck(layer, (x,))
    assert torch.autograd.gradcheck(lambda m: nmf(m, rank, 3, solver), (x,))


# --------------------------------------------------------------------------------------------------
# Determinism and edge cases
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("solver", SOLVERS)
def test_deterministic_and_consumes_no_rng(solver: str) -> None:
    x = torch.rand(2, 3, 8, 29)  # an unusual size: the first call draws (and caches) the initial factors
    layer = NMF(rank=2, iterations=5, solver=solver)
    state = torch.random.get_rng_state()
    first = layer(x)
    second = layer(x.clone())
    assert torch.equal(torch.random.get_rng_state(), state), "the forward pass consumed global random state"
    assert torch.equal(first, second)


def test_initial_factors_drawn_under_inference_mode_serve_training() -> None:
    """nnU-Net's predictor runs under torch.inference_mode; a later training step must still backpropagate."""
    layer = NMF(rank=2, iterations=2, solver="mu")
    with torch.inference_mode():
        layer(torch.rand(4, 31))
    x = torch.rand(4, 31, requires_grad=True)
    layer(x).sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_all_zero_input_gives_zero_output_and_finite_gradients(solver: str, rank: int, dtype) -> None:
    x = torch.zeros(2, 4, 9, dtype=dtype, requires_grad=True)
    out = NMF(rank=rank, iterations=5, solver=solver)(x)
    assert torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("rank", [1, 3])
@pytest.mark.parametrize("scale", [1e-38, 1e-30, 1e-10, 1e-3, 1e6, 1e15, 1e25])
def test_extreme_magnitudes_stay_finite(solver: str, rank: int, scale: float) -> None:
    """Finite output and gradients from subnormal float32 magnitudes up; for HALS with R = 3 at small
    magnitudes the start F0 / max(X) is huge (its products overflow to -inf before the clamp)."""
    x = (torch.rand(2, 8, 40) * scale).requires_grad_()
    out = NMF(rank=rank, iterations=5, solver=solver)(x)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("solver,rank", [("mu", 1), ("hals", 1), ("mu", 3)])
@pytest.mark.parametrize("scale", [1e-30, 1e-6, 1e-2, 1e2, 1e6, 1e12, 1e25])
def test_scale_equivariance_in_float32(solver: str, rank: int, scale: float) -> None:
    """NMF(sX) = s NMF(X) for R = 1 (eq. 14 is homogeneous) and for MU (homogeneous of degree 0 in F)
    over the whole float32 range: the iterations run on X / max(X), so eps = 1e-8 stays relative to
    the data and no product under- or overflows. (HALS with R > 1 is not: Algorithm 2 starts from a
    fixed F0, see test_rank_r_updates_equal_the_algorithms_on_the_unscaled_matrix.)"""
    torch.manual_seed(0)
    x = torch.rand(3, 8, 40)
    layer = NMF(rank=rank, iterations=5, solver=solver)
    torch.testing.assert_close(layer(x * scale), layer(x) * scale, rtol=1e-3, atol=0)


@pytest.mark.parametrize("dtype", [pytest.param(torch.bfloat16, id="bf16"), pytest.param(torch.float16, id="fp16")])
@pytest.mark.parametrize("solver", SOLVERS)
def test_autocast_computes_in_float32(solver: str, dtype: torch.dtype) -> None:
    """Under CPU autocast the factors are float32 and the result equals the float32 one far below the
    half-precision rounding (2^-8 for bf16, 2^-11 for fp16) a half-precision computation would show."""
    torch.manual_seed(1)
    x = torch.rand(4, 8, 64)
    layer = NMF(rank=2, iterations=5, solver=solver)
    reference = layer(x)
    with torch.autocast("cpu", dtype=dtype):
        f, g = layer.factorize(x)
        out = layer(x)
        out_half = layer(x.to(dtype))
    assert f.dtype == g.dtype == torch.float32
    assert out.dtype == torch.float32
    assert ((out - reference).norm() / reference.norm()).item() < 1e-6
    # Half-precision input: only the input's and the output's roundings remain.
    assert out_half.dtype == dtype
    reference_half = layer(x.to(dtype).float())
    unit_roundoff = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}[dtype]
    assert ((out_half.float() - reference_half).norm() / reference_half.norm()).item() < unit_roundoff


# --------------------------------------------------------------------------------------------------
# Column mask (padded windows)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("rank", [1, 2])
def test_masked_zero_columns_at_the_end_equal_the_unpadded_factorization(solver: str, rank: int) -> None:
    """Zero columns appended and masked out: the same F, the same G rows, zero G rows for the padding."""
    x = random_nonnegative(5, 13, seed=21, rank=rank)
    padded = torch.cat([x, torch.zeros(5, 6, dtype=x.dtype)], dim=1)
    mask = torch.cat([torch.ones(13), torch.zeros(6)])
    f_pad, g_pad = nmf(padded, rank=rank, iterations=5, solver=solver, column_mask=mask)
    f, g = nmf(x, rank=rank, iterations=5, solver=solver)
    torch.testing.assert_close(f_pad, f, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(g_pad[:13], g, rtol=1e-12, atol=1e-14)
    assert torch.equal(g_pad[13:], torch.zeros_like(g_pad[13:]))
    # Not vacuous: without the mask the padded columns change the result.
    f_unmasked, _ = nmf(padded, rank=rank, iterations=5, solver=solver)
    assert not torch.allclose(f_unmasked, f)


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("rank", [1, 2])
def test_masked_columns_anywhere_drop_out_of_the_factorization(solver: str, rank: int) -> None:
    """Padded columns scattered inside the matrix (as in a padded window): the factorization equals the
    reference algorithm run on the real columns alone, from the initial G rows of those columns."""
    x = random_nonnegative(4, 16, seed=22, rank=rank)
    real = torch.tensor([c % 4 != 3 for c in range(16)])  # a 4 x 4 window padded from 4 x 3
    x = x * real
    batch = torch.stack([x, 2 * x])  # the mask broadcasts over leading batch axes
    eps = 0.0 if solver == "hals" else 1e-8  # as the references (MU needs eps for the 0/0 of masked rows)
    f, g = nmf(batch, rank=rank, iterations=4, solver=solver, column_mask=real.float(), eps=eps)
    f0, g0 = initial_factors(4, 16, rank)
    for k, scale in enumerate((1, 2)):
        f_ref, g_ref = REFERENCES[solver](scale * x[:, real], f0, g0[real], 4)
        torch.testing.assert_close(f[k], f_ref, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(g[k][real], g_ref, rtol=1e-6, atol=1e-9)
        assert torch.equal(g[k][~real], torch.zeros_like(g[k][~real]))


# --------------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------------


def test_bad_arguments_raise_value_error() -> None:
    x = torch.rand(4, 6)
    with pytest.raises(ValueError, match="solver"):
        nmf(x, solver="als")
    with pytest.raises(ValueError, match="solver"):
        NMF(solver="als")
    with pytest.raises(ValueError, match="rank"):
        nmf(x, rank=0)
    with pytest.raises(ValueError, match="iterations"):
        nmf(x, iterations=-1)
    with pytest.raises(ValueError, match="rank"):
        NMF(rank=0)(x)
