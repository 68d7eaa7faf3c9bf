"""Blocks made of residual branches, as both papers' blocks are: x <- x + branch(x) for each branch in turn.

Deconver (papers/deconver.md eq. 4) and Factorizer (papers/factorizer.md eq. 4-5) blocks are two such
branches, each starting with its normalisation.
"""

from __future__ import annotations

from torch import Tensor, nn


class ResidualBranches(nn.Module):
    """Base of a block whose forward is x <- x + branch(x) over :meth:`branches`, in order."""

    def branches(self) -> list[nn.Module]:
        """The block's residual branches, in the order they are applied."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        for branch in self.branches():
            x = x + branch(x)
        return x
