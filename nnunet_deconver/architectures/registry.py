"""The architectures a plans file may name, declared where each is defined.

An architecture registers itself with the :func:`register_architecture` decorator next to its
class; nothing else keeps a list. :func:`registered_architectures` imports every module of this
package once, so a new family's network is known as soon as its file exists.

Two kinds of entry:

* a network of this package (DeconverUNet, FactorizerUNet, ...) built from the plans' topology plus
  its own hyper-parameters;
* a *wrapper* of one of nnU-Net's networks (``wraps=PlainConvUNet``): it takes every argument of the
  wrapped network plus its own, so a preset keeps nnU-Net's whole planned architecture and adds the
  wrapper's options (the DTC decoders, for instance).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

# Supplied by nnU-Net's get_network_from_plans (and our trainers), never by a plans file.
BUILD_TIME_ARGUMENTS = frozenset({"input_channels", "num_classes", "deep_supervision"})


@dataclass(frozen=True)
class ArchitectureEntry:
    """One registered architecture.

    Attributes:
        cls: the network class; plans name it by its dotted path (:attr:`name`).
        wraps: the nnU-Net network whose planned architecture it keeps and extends, or ``None``.
        from_plans_configuration: arguments read from the plans configuration itself rather than
            from its ``arch_kwargs`` (e.g. ``patch_size``, which sizes a positional embedding).
    """

    cls: type[nn.Module]
    wraps: type[nn.Module] | None = None
    from_plans_configuration: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return class_path(self.cls)

    def accepted_arguments(self) -> frozenset[str]:
        """Hyper-parameters a plans file may give: the constructor's, and where it passes ``**kwargs`` on, those
        of the next constructor up the class hierarchy (the scaffold's options, a wrapped network's arguments)."""
        accepted: set[str] = set()
        for cls in self.cls.__mro__:
            if "__init__" not in vars(cls):
                continue
            parameters = inspect.signature(cls.__init__).parameters
            accepted |= {name for name, p in parameters.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
            if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
                break
        internal = getattr(self.cls, "internal_arguments", frozenset())
        return frozenset(accepted - {"self"} - BUILD_TIME_ARGUMENTS - internal)


_REGISTRY: dict[str, ArchitectureEntry] = {}


def class_path(cls: type) -> str:
    """The dotted path nnU-Net's plans use for ``cls`` (``architecture.network_class_name``)."""
    return f"{cls.__module__}.{cls.__qualname__}"


def register_architecture(
    *, wraps: type[nn.Module] | None = None, from_plans_configuration: tuple[str, ...] = ()
) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make the class nameable in plans files (see :class:`ArchitectureEntry`)."""

    def register(cls: type[nn.Module]) -> type[nn.Module]:
        entry = ArchitectureEntry(cls, wraps, tuple(from_plans_configuration))
        _REGISTRY[entry.name] = entry
        return cls

    return register


@functools.cache
def _import_all_architecture_modules() -> None:
    package = importlib.import_module(__package__)
    for module_info in pkgutil.iter_modules(package.__path__, f"{__package__}."):
        importlib.import_module(module_info.name)


def registered_architectures() -> dict[str, ArchitectureEntry]:
    """Every registered architecture by dotted class path."""
    _import_all_architecture_modules()
    return dict(_REGISTRY)


def architecture_entry(network_class_name: str) -> ArchitectureEntry | None:
    """The entry for a plans file's ``network_class_name``, or ``None`` if it is not one of ours."""
    return registered_architectures().get(network_class_name)
