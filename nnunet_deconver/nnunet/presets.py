"""Presets: JSON files that name an architecture and its hyper-parameters for 2-D or 3-D plans.

A preset either keeps nnU-Net's planned topology (stages, widths, strides, kernels) or prescribes
the paper's: ``stages = {"n_stages": L, "base_features": C0, "max_features": 512}`` gives widths
C_l = min(C0 * 2^l, 512) over the first L of nnU-Net's planned strides (papers/deconver.md, III.C).
The shipped presets live in the top-level ``plans/`` folder (``paper/``: the papers' configurations,
``nnunet-topology/``: nnU-Net's planned topology); a path to a JSON file of the same form works too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnunet_deconver.nnunet.architecture_registry import PLANS_CONFIGURATION_ARGUMENTS, validate_architecture
from nnunet_deconver.nnunet.plans_topology import TOPOLOGY_KEYS
from nnunet_deconver.shipped_folders import shipped_folder

PRESET_FOLDER = Path(shipped_folder("plans"))
PRESET_KEYS = {"description", "dimension", "network_class_name", "arch_kwargs", "stages"}
STAGE_RULE_KEYS = {"n_stages", "base_features", "max_features"}


@dataclass(frozen=True)
class Preset:
    """One architecture choice for the configurations of one dimensionality."""

    name: str
    description: str
    dimension: int
    network_class_name: str
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    stages: dict[str, int] | None = None

    def architecture(
        self, planned: dict[str, Any], configuration_name: str, configuration: dict[str, Any]
    ) -> dict[str, Any]:
        """The ``architecture`` entry of a plans configuration whose planned arch_kwargs are ``planned``.

        ``configuration`` is the plans configuration itself; the values an architecture reads from it
        (:data:`PLANS_CONFIGURATION_ARGUMENTS`, e.g. the patch size) are copied into the arch_kwargs,
        where nnU-Net's stock trainer and predictor find them.

        Raises:
            ValueError: if the preset needs more stages than nnU-Net planned for the configuration, or
                wraps another network than the one planned.
        """
        network_class = validate_architecture(self.network_class_name, self.arch_kwargs)
        wrapped = getattr(network_class, "wrapped_architecture", None)
        if wrapped is not None:
            return self._wrapped_architecture(wrapped, configuration_name, configuration)
        topology = {key: planned[key] for key in TOPOLOGY_KEYS}
        if self.stages is not None:
            n_stages = self.stages["n_stages"]
            if n_stages > planned["n_stages"]:
                raise ValueError(
                    f"Preset {self.name!r} needs {n_stages} stages but nnU-Net planned {planned['n_stages']} for "
                    f"'{configuration_name}' (its patch size allows no more downsampling); use a preset that keeps "
                    f"nnU-Net's topology (e.g. deconver-{self.dimension}d-k3) or plan a larger patch."
                )
            topology.update(
                n_stages=n_stages,
                features_per_stage=[
                    min(self.stages["base_features"] * 2**level, self.stages["max_features"]) for level in range(n_stages)
                ],
                kernel_sizes=planned["kernel_sizes"][:n_stages],
                strides=planned["strides"][:n_stages],
            )
        from_configuration = {name: configuration[name] for name in PLANS_CONFIGURATION_ARGUMENTS.get(network_class, ())}
        return {
            "network_class_name": self.network_class_name,
            "arch_kwargs": {**topology, **from_configuration, **self.arch_kwargs},
            "_kw_requires_import": ["conv_op"],
        }

    def _wrapped_architecture(
        self, wrapped: type, configuration_name: str, configuration: dict[str, Any]
    ) -> dict[str, Any]:
        """A wrapper of nnU-Net's planned network (DTC) keeps the whole planned architecture and adds its own
        arguments.

        Raises:
            ValueError: the configuration's planned network is not the one the preset wraps.
        """
        planned = configuration["architecture"]
        wrapped_name = f"{wrapped.__module__}.{wrapped.__qualname__}"
        if planned["network_class_name"] != wrapped_name:
            raise ValueError(
                f"Preset {self.name!r} wraps {wrapped.__name__} but '{configuration_name}' plans "
                f"{planned['network_class_name'].rsplit('.', 1)[-1]}; choose the preset for that network "
                f"(`nnunet-deconver presets`)."
            )
        return {
            "network_class_name": self.network_class_name,
            "arch_kwargs": {**planned["arch_kwargs"], **self.arch_kwargs},
            "_kw_requires_import": list(planned.get("_kw_requires_import", [])),
        }


def available_presets() -> dict[str, Path]:
    """Shipped presets by name: every JSON file under ``plans/`` (``paper/``, ``nnunet-topology/``, ...)."""
    return {path.stem: path for path in sorted(PRESET_FOLDER.rglob("*.json"), key=lambda path: path.stem)}


def load_preset(name_or_path: str) -> Preset:
    """Load a shipped preset by name, or a preset JSON file by path, and validate it.

    Raises:
        ValueError: one line naming what is wrong (unknown preset, key, class or hyper-parameter).
    """
    shipped = available_presets()
    path = shipped.get(name_or_path, Path(name_or_path))
    if not path.is_file():
        raise ValueError(f"Unknown preset {name_or_path!r}; shipped presets: {', '.join(shipped)} (or a path to a JSON file).")
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"Preset file {path} is not valid JSON: {error}.") from error
    unknown = sorted(set(content) - PRESET_KEYS)
    missing = sorted({"dimension", "network_class_name"} - set(content))
    if unknown or missing:
        raise ValueError(f"Preset {path}: unknown keys {unknown}, missing keys {missing}; allowed keys: {sorted(PRESET_KEYS)}.")
    if content["dimension"] not in (2, 3):
        raise ValueError(f"Preset {path}: 'dimension' must be 2 or 3, got {content['dimension']!r}.")
    stages = content.get("stages")
    if stages is not None and (set(stages) != STAGE_RULE_KEYS or any(not isinstance(v, int) or v < 1 for v in stages.values())):
        raise ValueError(f"Preset {path}: 'stages' must give positive integers for exactly {sorted(STAGE_RULE_KEYS)}.")
    arch_kwargs = content.get("arch_kwargs", {})
    validate_architecture(content["network_class_name"], arch_kwargs)
    return Preset(
        name=path.stem,
        description=content.get("description", ""),
        dimension=content["dimension"],
        network_class_name=content["network_class_name"],
        arch_kwargs=arch_kwargs,
        stages=stages,
    )
