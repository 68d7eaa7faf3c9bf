"""How much memory autograd keeps for backward."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor


def _storage_key(tensor: Tensor) -> int:
    """One key per storage (the address of its StorageImpl): views share it, also on meta and fake tensors."""
    return tensor.untyped_storage()._cdata


def saved_tensor_bytes(step: Callable[[], Any], exclude: Iterable[Tensor] = ()) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``step()`` runs.

    Args:
        step: builds the graph (e.g. a forward pass with gradients enabled).
        exclude: tensors whose storage is not counted (a layer's input, the parameters).
    """
    excluded = {_storage_key(tensor) for tensor in exclude}
    storages: dict[int, Tensor] = {}

    def pack(tensor: Tensor) -> Tensor:
        key = _storage_key(tensor)
        if key not in excluded:
            storages[key] = tensor if tensor._base is None else tensor._base
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        step()
    return sum(t.untyped_storage().nbytes() for t in storages.values())
