"""Build, and check before anything is written, the network a plans ``architecture`` entry names.

Every network of the package is built by one path, nnU-Net's own ``get_network_from_plans`` (the
path nnU-Net's stock trainer and predictor take for a derived plans file), after the names in the
entry were checked against the registry (:mod:`nnunet_deconver.architectures.registry`).
:func:`validate_architecture` builds the network on PyTorch's meta device (no memory, no
computation) and runs one training-size patch through it, so an invalid hyper-parameter is refused
with one line before a plans file is written or a trainer starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from torch import nn

from nnunet_deconver.architectures.registry import ArchitectureEntry, architecture_entry, registered_architectures

Architecture = dict[str, Any]
"""A plans configuration's ``architecture`` entry: network_class_name, arch_kwargs, _kw_requires_import."""


def checked_entry(network_class_name: str, arch_kwargs: Mapping[str, Any]) -> ArchitectureEntry:
    """The registry entry of ``network_class_name`` after checking the hyper-parameter names.

    Raises:
        ValueError: one line naming the unknown class or hyper-parameter and what is allowed.
    """
    entry = architecture_entry(network_class_name)
    if entry is None:
        raise ValueError(
            f"Unknown architecture class {network_class_name!r}; nnunet-deconver provides "
            f"{sorted(registered_architectures())}."
        )
    accepted = entry.accepted_arguments()
    unknown = sorted(set(arch_kwargs) - accepted)
    if unknown:
        raise ValueError(
            f"Unknown hyper-parameter(s) {unknown} for {entry.cls.__name__}; valid ones are {sorted(accepted)}."
        )
    return entry


def build_network(
    architecture: Mapping[str, Any],
    input_channels: int,
    num_classes: int,
    deep_supervision: bool,
    configuration: Mapping[str, Any],
) -> nn.Module:
    """The network of a plans ``architecture`` entry, built like nnU-Net builds the planned network.

    Arguments an architecture reads from the plans configuration (``from_plans_configuration``, e.g.
    the patch size) are taken from ``configuration`` unless the arch_kwargs give them.
    """
    arch_kwargs = dict(architecture["arch_kwargs"])
    entry = checked_entry(architecture["network_class_name"], arch_kwargs)
    for name in entry.from_plans_configuration:
        arch_kwargs.setdefault(name, list(configuration[name]))
    return get_network_from_plans(
        entry.name, arch_kwargs, architecture.get("_kw_requires_import", ()), input_channels, num_classes,
        allow_init=True, deep_supervision=deep_supervision,
    )


def validate_architecture(architecture: Mapping[str, Any], configuration: Mapping[str, Any], context: str) -> None:
    """Build the network on the meta device and pass one training patch through it.

    Raises:
        ValueError: ``"<context>: <what is wrong>"``, one line, for any invalid class, hyper-parameter
            or patch size.
    """
    try:
        with torch.device("meta"):
            network = build_network(architecture, 1, 2, True, configuration)
            patch_size = configuration.get("patch_size")
            if patch_size is not None:
                network(torch.empty(1, 1, *patch_size))
    except (ValueError, TypeError, RuntimeError, ImportError, AssertionError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{context}: {message}") from error
