"""Soft shrinkage with learned per-channel thresholds: papers/segmentation-cnns-are-denoising-models.md.

Appendix A, eq. (18): S_b(x) = (x - b)_+ - (-x - b)_+, with b = alpha * tau (Fig. 1, section 3.2):
tau is learned per output channel, initialised to 0, sign unconstrained (for tau < 0 eq. (18)
differs from eq. (17) and the layer follows eq. (18), as the authors' code does), and alpha is one
scalar shared by every shrinkage of a network. alpha = 1 is the trained model; alpha = 0 makes
every shrinkage the identity, so the encoder-decoder is linear and has an impulse response
(eq. (15), Appendix B).

The authors' code replaces the two ReLUs by leaky ReLUs, slopes 0.001 for the (x - b) term and
0.01 for the (-x - b) term (:data:`AUTHORS_LEAKS`); at alpha = 0 that map is piecewise linear
(slope 1.01 for x > 0, 1.001 for x < 0), not the identity. The default is the exact eq. (18).

alpha is a plain module attribute, not a forward argument (nnU-Net's predictor passes only the
image): :func:`shrinkage_scale` sets it on every shrinkage of a network and restores it afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

AUTHORS_LEAKS: tuple[float, float] = (0.001, 0.01)


def _slopes(x: Tensor, bias: Tensor, leaks: tuple[float, float]) -> tuple[Tensor, Tensor]:
    """The derivatives of the two leaky ReLUs of eq. (18) at (x - b) and (-x - b)."""
    one = torch.ones((), dtype=x.dtype, device=x.device)
    return (torch.where(x - bias > 0, one, leaks[0]), torch.where(-x - bias > 0, one, leaks[1]))


class _Shrink(torch.autograd.Function):
    """Eq. (18) keeping only its input for backward (autograd would keep both ReLU inputs, 2x the memory).

    dS/dx = l0'(x - b) + l1'(-x - b) and dS/db = l1'(-x - b) - l0'(x - b), with l' the slope (1 or the leak).
    """

    @staticmethod
    def forward(x: Tensor, bias: Tensor, leaks: tuple[float, float]) -> Tensor:
        return F.leaky_relu(x - bias, leaks[0]) - F.leaky_relu(-x - bias, leaks[1])

    @staticmethod
    def setup_context(ctx, inputs: tuple[Tensor, Tensor, tuple[float, float]], output: Tensor) -> None:
        x, bias, leaks = inputs
        ctx.save_for_backward(x, bias)
        ctx.leaks = leaks

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        x, bias = ctx.saved_tensors
        rising, falling = _slopes(x, bias, ctx.leaks)
        grad_x = grad * (rising + falling) if ctx.needs_input_grad[0] else None
        grad_bias = None
        if ctx.needs_input_grad[1]:
            reduced = [0, *range(2, x.dim())]
            grad_bias = (grad * (falling - rising)).sum(reduced, dtype=torch.float32).view(bias.shape).to(bias.dtype)
        return grad_x, grad_bias, None


class SoftShrinkage(nn.Module):
    """Eq. (18) per channel: S(x) = lrelu_{l0}(x - alpha tau_c) - lrelu_{l1}(-x - alpha tau_c).

    Acts on (B, C, *spatial) with any number of spatial axes; computes in the input's dtype (under
    autocast, the dtype of the preceding convolution's output).

    Args:
        channels: C, the number of thresholds tau (parameter ``threshold`` of shape (C,), zeros).
        leaks: (l0, l1), the negative slopes of the (x - b) and (-x - b) terms; (0, 0) is eq. (18)
            exactly, :data:`AUTHORS_LEAKS` reproduces the authors' released models.
    """

    def __init__(self, channels: int, *, leaks: tuple[float, float] = (0.0, 0.0)) -> None:
        super().__init__()
        if len(leaks) != 2 or not all(0.0 <= leak < 1.0 for leak in leaks):
            raise ValueError(f"leaks must be two slopes in [0, 1), got {leaks}; use (0, 0) for eq. (18)")
        self.threshold = nn.Parameter(torch.zeros(channels))
        self.leaks = (float(leaks[0]), float(leaks[1]))
        self.alpha = 1.0

    @property
    def alpha(self) -> float:
        """The scale of every threshold (1: trained behaviour, 0: linear)."""
        return self._alpha

    @alpha.setter
    def alpha(self, value: float) -> None:
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"alpha must be a finite number, got {value}")
        self._alpha = value

    def forward(self, x: Tensor) -> Tensor:
        channels = self.threshold.shape[0]
        if x.dim() < 2 or x.shape[1] != channels:
            raise ValueError(
                f"SoftShrinkage({channels}) expects (B, {channels}, *spatial), got shape {tuple(x.shape)}"
            )
        bias = (self.alpha * self.threshold).to(x.dtype).view(channels, *(1,) * (x.dim() - 2))
        return _Shrink.apply(x, bias, self.leaks)

    def extra_repr(self) -> str:
        return f"{self.threshold.shape[0]}, leaks={self.leaks}, alpha={self.alpha}"


def shrinkage_modules(network: nn.Module) -> list[SoftShrinkage]:
    """Every :class:`SoftShrinkage` in ``network`` (also through DDP / torch.compile wrappers)."""
    modules = [module for module in network.modules() if isinstance(module, SoftShrinkage)]
    if not modules:
        raise ValueError(
            f"{type(network).__name__} has no SoftShrinkage layers; alpha applies only to shrinkage networks (SUM)"
        )
    return modules


def set_shrinkage_scale(network: nn.Module, alpha: float) -> None:
    """Set alpha on every shrinkage of ``network`` (one global alpha, Fig. 1)."""
    for module in shrinkage_modules(network):
        module.alpha = alpha


@contextmanager
def shrinkage_scale(network: nn.Module, alpha: float) -> Iterator[nn.Module]:
    """Run a block with every shrinkage of ``network`` at ``alpha``; restores each one's value after.

    ``with shrinkage_scale(net, 0.0): r = net(delta)`` is the linear encoder-decoder of eq. (15).
    """
    modules = shrinkage_modules(network)
    previous = [module.alpha for module in modules]
    try:
        set_shrinkage_scale(network, alpha)
        yield network
    finally:
        for module, value in zip(modules, previous):
            module.alpha = value
