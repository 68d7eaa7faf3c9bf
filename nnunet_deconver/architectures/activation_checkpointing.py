"""Activation checkpointing of a U-Net's blocks: the memory knob of every family (``activation_checkpointing``).

A checkpointed block keeps only its input for backward and recomputes its inside during backward
(``torch.utils.checkpoint`` non-reentrant: works with autocast, torch.compile and DDP, and nnU-Net's
deep supervision). (Checkpointing the two residual branches of a block separately was measured too: under
fp16 autocast it saves a third more and peaks no lower, so whole blocks are checkpointed.) Values and gradients are unchanged; the cost is one more forward pass of the
checkpointed blocks. Modes:

* ``off``: nothing is recomputed (most memory, least time);
* ``selective``: the blocks of the levels that hold most activations, the two highest resolutions,
  in the encoder and the decoder (in 3-D about 94 % of the blocks' activations for 1/4 of their
  FLOPs beyond level 0; in 2-D 75 %);
* ``full``: every block.

The upsamplers that keep large activations of their own (DTC) are checkpointed at the same levels.

Only training steps (gradients enabled) checkpoint; inference runs the blocks as they are. The
state dict does not change, so checkpoints load whatever the mode.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from nnunet_deconver.architectures.hyperparameter_checks import check_choice

CHECKPOINTING_MODES = ("off", "selective", "full")
DEFAULT_CHECKPOINTING = "full"
"""Every network's default (docs/benchmarks.md): at nnU-Net's plans it keeps every family's saved
activations at or below PlainConvUNet's."""
SELECTIVE_LEVELS = 2
"""``selective`` checkpoints the blocks of levels 0 .. SELECTIVE_LEVELS - 1."""


def check_checkpointing_mode(mode: str) -> None:
    """One-line error for a mode that is not one of :data:`CHECKPOINTING_MODES`."""
    check_choice("activation_checkpointing", mode, CHECKPOINTING_MODES, "full")


def checkpoints_level(mode: str, level: int) -> bool:
    """Whether ``mode`` checkpoints the blocks at resolution ``level`` (0 = full resolution)."""
    return mode == "full" or (mode == "selective" and level < SELECTIVE_LEVELS)


class StageSequence(nn.Sequential):
    """nn.Sequential whose entries from ``first_block`` on are blocks, checkpointed if ``checkpointed``.

    Same children and state-dict keys as nn.Sequential; the flag can be changed on a built network.
    """

    def __init__(self, modules: Iterable[nn.Module], *, first_block: int, checkpointed: bool) -> None:
        super().__init__(*modules)
        self.first_block = first_block
        self.checkpointed = checkpointed

    def forward(self, x: Tensor) -> Tensor:
        recompute = self.checkpointed and torch.is_grad_enabled()
        for index, module in enumerate(self):
            if recompute and index >= self.first_block:
                x = checkpoint(module, x, use_reentrant=False)
            else:
                x = module(x)
        return x

    def extra_repr(self) -> str:
        return "checkpointed" if self.checkpointed else ""
