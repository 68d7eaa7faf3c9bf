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

from nnunet_deconver.architectures.registry import class_path
from nnunet_deconver.nnunet.network_from_plans import Architecture, checked_entry, validate_architecture
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

    def architecture(self, planned: Architecture, configuration_name: str, configuration: dict[str, Any]) -> Architecture:
        """The ``architecture`` entry of a plans configuration whose planned architecture is ``planned``.

        A wrapper of one of nnU-Net's networks (DTC) keeps the whole planned architecture and adds its
        options; any other architecture takes the planned topology (or the preset's ``stages`` rule).
        ``configuration`` is the plans configuration itself; the values an architecture reads from it
        (e.g. the patch size) are copied into the arch_kwargs, where nnU-Net's stock trainer and
        predictor find them. The result is built on the meta device (and a patch passed through it)
        before it is returned.

        Raises:
            ValueError: one line: the preset needs more stages than nnU-Net planned, wraps another
                network than the planned one, or a hyper-parameter is invalid for these plans.
        """
        entry = checked_entry(self.network_class_name, self.arch_kwargs)
        if entry.wraps is not None:
            if planned["network_class_name"] != class_path(entry.wraps):
                raise ValueError(
                    f"Preset {self.name!r} wraps {entry.wraps.__name__} but '{configuration_name}' plans "
                    f"{planned['network_class_name'].rsplit('.', 1)[-1]}; choose the preset for that network "
                    f"(`nnunet-deconver presets`)."
                )
            architecture = {
                "network_class_name": self.network_class_name,
                "arch_kwargs": {**planned["arch_kwargs"], **self.arch_kwargs},
                "_kw_requires_import": list(planned.get("_kw_requires_import", [])),
            }
        else:
            from_configuration = {name: configuration[name] for name in entry.from_plans_configuration}
            architecture = {
                "network_class_name": self.network_class_name,
                "arch_kwargs": {**self._topology(planned["arch_kwargs"], configuration_name), **from_configuration,
                                **self.arch_kwargs},
                "_kw_requires_import": ["conv_op"],
            }
        validate_architecture(architecture, configuration, f"Preset {self.name!r} on configuration {configuration_name!r}")
        return architecture

    def _topology(self, planned: dict[str, Any], configuration_name: str) -> dict[str, Any]:
        """The planned topology, or the preset's ``stages`` rule over the first L planned strides."""
        topology = {key: planned[key] for key in TOPOLOGY_KEYS}
        if self.stages is None:
            return topology
        n_stages = self.stages["n_stages"]
        if n_stages > planned["n_stages"]:
            raise ValueError(
                f"Preset {self.name!r} needs {n_stages} stages but nnU-Net planned {planned['n_stages']} for "
                f"'{configuration_name}' (its patch size allows no more downsampling); use a preset that keeps "
                f"nnU-Net's topology (e.g. deconver-{self.dimension}d-k3) or plan a larger patch."
            )
        return {
            **topology,
            "n_stages": n_stages,
            "features_per_stage": [
                min(self.stages["base_features"] * 2**level, self.stages["max_features"]) for level in range(n_stages)
            ],
            "kernel_sizes": planned["kernel_sizes"][:n_stages],
            "strides": planned["strides"][:n_stages],
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
    checked_entry(content["network_class_name"], arch_kwargs)
    return Preset(
        name=path.stem,
        description=content.get("description", ""),
        dimension=content["dimension"],
        network_class_name=content["network_class_name"],
        arch_kwargs=arch_kwargs,
        stages=stages,
    )
