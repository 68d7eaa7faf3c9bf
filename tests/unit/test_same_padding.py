"""same_padding: F.pad's result without keeping the input for backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nnunet_deconver.layers.same_padding import same_padding


@pytest.mark.parametrize("mode", ["replicate", "zeros", "reflect", "circular"])
@pytest.mark.parametrize("kernel", [(3, 3), (1, 5), (3, 1, 5)])
def test_equals_torch_padding_values_and_gradients(mode: str, kernel: tuple[int, ...]) -> None:
    x = torch.randn(2, 3, *[6 + i for i in range(len(kernel))], dtype=torch.float64, requires_grad=True)
    pads = [p for k in reversed(kernel) for p in (k // 2, k // 2)]
    reference = F.pad(x, pads, mode="constant" if mode == "zeros" else mode)
    padded = same_padding(x, kernel, mode)
    torch.testing.assert_close(padded, reference)
    weights = torch.randn_like(reference)
    (grad,) = torch.autograd.grad((padded * weights).sum(), x)
    (expected,) = torch.autograd.grad((reference * weights).sum(), x)
    torch.testing.assert_close(grad, expected)


def test_replicate_padding_keeps_nothing_for_backward() -> None:
    x = torch.randn(1, 4, 8, 8, 8, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        same_padding(x, (3, 3, 3), "replicate")
    assert saved == []


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="padding mode 'edge'"):
        same_padding(torch.zeros(1, 1, 4, 4), (3, 3), "edge")
