"""A shared check for the network tests: a few optimizer steps on a learnable toy task reduce the loss."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def assert_a_few_adam_steps_reduce_the_loss(net: nn.Module, steps: int = 15) -> None:
    """Train ``net`` (2 input channels, 2 classes, 2-D, one logit map) on a spatially varying target."""
    x = torch.randn(2, 2, 16, 16)
    target = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = F.cross_entropy(net(x), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():
        final = F.cross_entropy(net(x), target).item()
    assert all(math.isfinite(v) for v in losses)
    assert final < 0.7 * losses[0], losses + [final]


def assert_deep_supervision_backward_reaches_every_parameter(net: nn.Module, patch: tuple[int, ...]) -> None:
    """One deep-supervision loss (2 input channels, 3 classes, targets resized to each output) reaches
    every parameter with a finite gradient: what DDP without find_unused_parameters needs."""
    x = torch.randn(2, 2, *patch)
    target = torch.randint(0, 3, (2, *patch))
    loss = sum(
        F.cross_entropy(out, F.interpolate(target[:, None].float(), size=out.shape[2:], mode="nearest")[:, 0].long())
        for out in net(x)
    )
    loss.backward()
    for name, parameter in net.named_parameters():
        assert parameter.grad is not None, f"{name} gets no gradient"
        assert torch.isfinite(parameter.grad).all(), f"{name} has a non-finite gradient"
