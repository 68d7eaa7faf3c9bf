"""The package's nnU-Net trainers, one module per family; nnU-Net finds them through ``trainers/``.

The list is computed, not kept by hand: :func:`trainer_classes` collects every ``nnUNetTrainer``
subclass defined in this package's modules (except a base that sets ``shared_base = True`` itself),
and ``from nnunet_deconver.nnunet.trainers import nnUNetTrainerDeconver`` resolves through it.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil


@functools.cache
def trainer_classes() -> dict[str, type]:
    """Every trainer class defined in this package's modules, by class name (its ``-tr`` name)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    found: dict[str, type] = {}
    for module_info in pkgutil.iter_modules(__path__, f"{__name__}."):
        module = importlib.import_module(module_info.name)
        for name, value in inspect.getmembers(module, inspect.isclass):
            if value.__module__ == module.__name__ and issubclass(value, nnUNetTrainer) and not vars(value).get(
                "shared_base", False
            ):
                found[name] = value
    return found


def __getattr__(name: str) -> type:
    trainers = trainer_classes() if name.startswith("nnUNetTrainer") else {}
    if name not in trainers:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return trainers[name]
