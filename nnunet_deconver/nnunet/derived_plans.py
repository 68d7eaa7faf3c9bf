"""Write a derived nnU-Net plans file whose configurations carry a plugin architecture.

``nnunet-deconver plan -d D --preset deconver-2d-k5 --preset deconver-3d-k3`` reads
``nnUNet_preprocessed/DatasetD_*/nnUNetPlans.json`` and writes ``nnUNetDeconverPlans.json`` next to
it. Only the ``architecture`` entries change: every configuration keeps its data_identifier, so the
new plans share the preprocessed data and nnUNetv2_train / nnUNetv2_predict with
``-p nnUNetDeconverPlans`` build the preset's network. The source plans are never modified, and an
existing derived plans file with different content is never replaced. With ``--gpu-memory-target GB``
each configuration's patch, batch and topology are re-planned for the preset's network
(:mod:`memory_planning`).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from nnunetv2.paths import nnUNet_preprocessed
from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from torch import nn

from nnunet_deconver.nnunet.memory_planning import replan_configuration
from nnunet_deconver.nnunet.network_from_plans import build_network
from nnunet_deconver.nnunet.presets import Preset

DEFAULT_DERIVED_PLANS = "nnUNetDeconverPlans"


@dataclass(frozen=True)
class MemoryTarget:
    """Re-plan patch and batch for the preset's network within ``gib`` (see :mod:`memory_planning`)."""

    gib: float
    input_channels: int
    num_classes: int
    num_training_cases: int
    progress: Callable[[str], None] = print


def _replanned(configuration: dict, name: str, preset: Preset, memory: MemoryTarget) -> dict:
    def network_for(candidate: dict) -> nn.Module:
        architecture = preset.architecture(candidate["architecture"], name, candidate)
        return build_network(architecture, memory.input_channels, memory.num_classes, True, candidate)

    memory.progress(f"{name}: re-planning for {preset.name} within {memory.gib:g} GiB")
    return replan_configuration(
        configuration, network_for, target_gib=memory.gib, input_channels=memory.input_channels,
        num_training_cases=memory.num_training_cases, progress=lambda line: memory.progress(f"  {line}"),
    )


def derive_plans(
    plans: dict, presets: Sequence[Preset], plans_name: str, source_plans: str, memory: MemoryTarget | None = None
) -> dict:
    """Return a copy of ``plans`` with each configuration's architecture taken from the preset of its dimension,
    and, with ``memory``, its patch, batch and topology re-planned for that network's memory.

    Raises:
        ValueError: two presets for one dimension, no configuration of any preset's dimension, or a memory
            target no patch fits.
    """
    by_dimension: dict[int, Preset] = {}
    for preset in presets:
        if preset.dimension in by_dimension:
            raise ValueError(
                f"Presets {by_dimension[preset.dimension].name!r} and {preset.name!r} are both {preset.dimension}D; "
                f"give at most one preset per dimension."
            )
        by_dimension[preset.dimension] = preset
    derived = copy.deepcopy(plans)
    applied: dict[str, str] = {}
    for name, configuration in derived["configurations"].items():
        preset = by_dimension.get(len(configuration.get("patch_size", ())))
        if preset is None or "architecture" not in configuration:  # 'inherits_from' configurations follow their parent
            continue
        if memory is not None:
            configuration = derived["configurations"][name] = _replanned(configuration, name, preset, memory)
        configuration["architecture"] = preset.architecture(configuration["architecture"], name, configuration)
        applied[name] = preset.name
    if not applied:
        raise ValueError(
            f"The plans have no configuration of dimension {sorted(by_dimension)}; their configurations are "
            f"{sorted(derived['configurations'])}."
        )
    derived["plans_name"] = plans_name
    derived["nnunet_deconver"] = {"source_plans": source_plans, "presets": applied}
    if memory is not None:
        derived["nnunet_deconver"]["gpu_memory_target_gib"] = memory.gib
    return derived


def memory_target(folder: Path, plans: dict, gib: float) -> MemoryTarget:
    """The :class:`MemoryTarget` of a preprocessed dataset folder (its dataset.json gives channels, labels, cases)."""
    dataset_json = json.loads((folder / "dataset.json").read_text())
    manager = PlansManager(plans)
    configuration = manager.get_configuration(next(iter(plans["configurations"])))
    return MemoryTarget(
        gib, determine_num_input_channels(manager, configuration, dataset_json),
        manager.get_label_manager(dataset_json).num_segmentation_heads, int(dataset_json["numTraining"]),
    )


def write_derived_plans(
    dataset: str | int,
    presets: Sequence[Preset],
    source_plans: str = "nnUNetPlans",
    plans_name: str = DEFAULT_DERIVED_PLANS,
    gpu_memory_target_gib: float | None = None,
) -> Path:
    """Write ``<plans_name>.json`` next to ``<source_plans>.json`` of a preprocessed dataset; return its path.

    Raises:
        FileNotFoundError: the dataset has no such source plans (run nnUNetv2_plan_and_preprocess first).
        FileExistsError: a different file of that name exists already.
        ValueError: bad preset combination or a preset that does not fit the plans.
    """
    if plans_name == source_plans:
        raise ValueError(f"The derived plans need a name other than the source plans {source_plans!r}.")
    folder = Path(nnUNet_preprocessed) / maybe_convert_to_dataset_name(dataset)
    source_file = folder / f"{source_plans}.json"
    if not source_file.is_file():
        raise FileNotFoundError(
            f"{source_file} does not exist; run nnUNetv2_plan_and_preprocess -d {dataset} first (or pass -p)."
        )
    target = folder / f"{plans_name}.json"
    if target.exists() and gpu_memory_target_gib is not None:  # re-planning takes minutes: refuse first
        raise FileExistsError(f"{target} exists; delete it or choose another name with -o.")
    plans = json.loads(source_file.read_text())
    if gpu_memory_target_gib is not None and gpu_memory_target_gib <= 0:
        raise ValueError(f"--gpu-memory-target must be a positive number of GiB, got {gpu_memory_target_gib:g}.")
    memory = memory_target(folder, plans, gpu_memory_target_gib) if gpu_memory_target_gib is not None else None
    derived_text = json.dumps(derive_plans(plans, presets, plans_name, source_plans, memory), indent=4) + "\n"
    if target.exists() and target.read_text() != derived_text:
        raise FileExistsError(
            f"{target} exists with other content (models trained with it would change); delete it or choose "
            f"another name with -o."
        )
    target.write_text(derived_text)
    return target
