"""What a checkpoint must match to load strictly: a network's tensor names and shapes, as a short signature."""

from __future__ import annotations

import hashlib

from torch import nn


def network_signature(network: nn.Module) -> dict:
    """Number of state-dict tensors, parameter count and a hash of the sorted ``name:shape`` lines."""
    entries = sorted(f"{name}:{list(tensor.shape)}" for name, tensor in network.state_dict().items())
    return {"tensors": len(entries), "parameters": sum(p.numel() for p in network.parameters()),
            "sha256": hashlib.sha256("\n".join(entries).encode()).hexdigest()}
