"""Matricize / Dematricize against papers/factorizer.md section 3.4.1 (eq. 7-8, Algorithm 3).

The index checks walk every voxel with plain integer arithmetic (grid index = position // P, patch
index = position % P, row-major flattening as eq. (7)'s (g_h g_w g_d) and (p_h p_w p_d) groupings
read), independent of the package's einops patterns.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from nnunet_deconver.layers.matricize import Matricizer

KINDS = ("global", "local", "swin")

# (spatial size, P): divisible, non-divisible, and windows larger than an axis; 2-D and 3-D.
SIZES = [
    pytest.param((16, 12), 4, id="2d-divisible"),
    pytest.param((13, 10), 4, id="2d-padded"),
    pytest.param((3, 20), 8, id="2d-window-larger-than-axis"),
    pytest.param((8, 8, 4), 4, id="3d-divisible"),
    pytest.param((5, 7, 9), 4, id="3d-padded"),
    pytest.param((2, 12, 6), 8, id="3d-window-larger-than-axis"),
]


def _row_major(index: tuple[int, ...], sizes: tuple[int, ...]) -> int:
    flat = 0
    for i, n in zip(index, sizes):
        flat = flat * n + i
    return flat


def expected_layout(spatial: tuple[int, ...], window: int):
    """Per-axis window p = min(P, n), windows per axis ceil(n / p)."""
    p = tuple(min(window, n) for n in spatial)
    grid = tuple(math.ceil(n / q) for n, q in zip(spatial, p))
    return p, grid


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("spatial", "window"), SIZES)
def test_dematricize_inverts_matricize(kind: str, spatial, window: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 8, *spatial)
    matricizer = Matricizer(kind, head_dim=4, window=window)
    layout = matricizer.matricize(x)
    p, grid = expected_layout(spatial, window)
    if kind == "global":
        assert layout.matrices.shape == (2, 2, 4, math.prod(spatial))
    else:
        local_shape = (2, 2, math.prod(grid), 4, math.prod(p))
        assert layout.matrices.shape == ((2, *local_shape) if kind == "swin" else local_shape)
    assert torch.equal(matricizer.dematricize(layout.matrices, layout), x)


@pytest.mark.parametrize(("spatial", "window"), SIZES)
def test_local_matrices_follow_eq_7_and_the_mask_marks_the_padding(spatial, window: int) -> None:
    """Z[b, g_c, (g_h g_w g_d), e, (p_h p_w p_d)] = X[b, g_c E + e, g_h P + p_h, ...] (eq. 7); every
    other entry is padding: zero in Z and zero in the column mask, and the mask is one elsewhere."""
    batch, channels, head_dim = 2, 6, 3
    x = torch.arange(batch * channels * math.prod(spatial), dtype=torch.float64).reshape(batch, channels, *spatial) + 1
    layout = Matricizer("local", head_dim=head_dim, window=window).matricize(x)
    p, grid = expected_layout(spatial, window)
    matrices = layout.matrices
    hit = torch.zeros(math.prod(grid), math.prod(p), dtype=torch.bool)
    for position in itertools.product(*(range(n) for n in spatial)):
        window_index = _row_major(tuple(i // q for i, q in zip(position, p)), grid)
        column = _row_major(tuple(i % q for i, q in zip(position, p)), p)
        hit[window_index, column] = True
        for b, c in itertools.product(range(batch), range(channels)):
            assert matrices[b, c // head_dim, window_index, c % head_dim, column] == x[(b, c, *position)]
    padding = matrices.transpose(-2, -3)[..., ~hit]  # (B, G, E, W, N) -> entries of the padded columns
    assert torch.equal(padding, torch.zeros_like(padding))
    padded = math.prod(g * q for g, q in zip(grid, p)) != math.prod(spatial)
    if padded:
        assert layout.column_mask is not None and layout.column_mask.shape == hit.shape
        assert torch.equal(layout.column_mask.bool(), hit)
        assert set(layout.column_mask.unique().tolist()) == {0.0, 1.0}
    else:
        assert layout.column_mask is None and hit.all()


def test_global_matrices_are_channel_heads_over_all_voxels() -> None:
    x = torch.randn(2, 6, 5, 7)
    layout = Matricizer("global", head_dim=3).matricize(x)
    assert layout.column_mask is None
    for b, c, h, w in itertools.product(range(2), range(6), range(5), range(7)):
        assert layout.matrices[b, c // 3, c % 3, h * 7 + w] == x[b, c, h, w]


@pytest.mark.parametrize(("spatial", "window"), SIZES)
def test_swin_is_local_plus_local_of_the_input_rolled_by_half_a_window(spatial, window: int) -> None:
    """Eq. (8): the second window set is Local Matricize of Roll_{P/2}(X) (P per axis, as applied)."""
    torch.manual_seed(1)
    x = torch.randn(1, 8, *spatial)
    p, _ = expected_layout(spatial, window)
    local = Matricizer("local", head_dim=4, window=window).matricize(x)
    swin = Matricizer("swin", head_dim=4, window=window).matricize(x)
    rolled = torch.roll(x, shifts=tuple(q // 2 for q in p), dims=tuple(range(2, x.dim())))
    local_rolled = Matricizer("local", head_dim=4, window=window).matricize(rolled)
    assert swin.matrices.shape[0] == 2
    assert torch.equal(swin.matrices[0], local.matrices)
    assert torch.equal(swin.matrices[1], local_rolled.matrices)
    if any(q // 2 for q in p):
        assert not torch.equal(swin.matrices[1], swin.matrices[0])
    for mask in (swin.column_mask, local_rolled.column_mask):
        assert (mask is None) == (local.column_mask is None)
        if mask is not None:
            assert torch.equal(mask, local.column_mask)


def test_swin_dematricize_averages_the_regular_and_the_unrolled_shifted_reconstruction() -> None:
    """Different content in the two window sets: the result is the mean of both images, each put back
    in place (the shifted one rolled back)."""
    torch.manual_seed(2)
    x, y = torch.randn(1, 4, 10, 12), torch.randn(1, 4, 10, 12)
    swin = Matricizer("swin", head_dim=2, window=4)
    layout_x, layout_y = swin.matricize(x), swin.matricize(y)
    mixed = torch.stack((layout_x.matrices[0], layout_y.matrices[1]))
    torch.testing.assert_close(swin.dematricize(mixed, layout_x), 0.5 * (x + y), rtol=0, atol=1e-6)


def test_dematricize_accepts_another_row_count() -> None:
    """R rows instead of E (spatial NMF components): (B, (C/E) R, *spatial), head h -> channels h R .. h R + R - 1."""
    x = torch.randn(2, 8, 6, 10)
    for kind in KINDS:
        matricizer = Matricizer(kind, head_dim=4, window=4)
        layout = matricizer.matricize(x)
        components = layout.matrices[..., :3, :]  # 3 rows of every matrix
        out = matricizer.dematricize(components, layout)
        assert out.shape == (2, 6, 6, 10)
        # Rows 0..2 of head h are channels 4h..4h+2 of x, so dematricize returns exactly those.
        torch.testing.assert_close(out, x[:, [0, 1, 2, 4, 5, 6]])


def test_head_dim_not_dividing_the_channels_is_a_clear_error() -> None:
    for kind in KINDS:
        with pytest.raises(ValueError, match=r"12 channels cannot be split into heads of E=5"):
            Matricizer(kind, head_dim=5, window=4).matricize(torch.randn(1, 12, 8, 8))


def test_bad_kind_window_and_head_dim_raise() -> None:
    with pytest.raises(ValueError, match="matricize kind"):
        Matricizer("tiled", head_dim=4)
    with pytest.raises(ValueError, match="head dimension"):
        Matricizer("local", head_dim=0)
    with pytest.raises(ValueError, match="does not fit a 2-D input"):
        Matricizer("local", head_dim=4, window=(4, 4, 4)).matricize(torch.randn(1, 4, 8, 8))
