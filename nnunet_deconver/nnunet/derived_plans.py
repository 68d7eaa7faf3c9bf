"""Write a derived nnU-Net plans file whose configurations carry a plugin architecture.

``nnunet-deconver plan -d D --preset deconver-2d-k5 --preset deconver-3d-k3`` reads
``nnUNet_preprocessed/DatasetD_*/nnUNetPlans.json`` and writes ``nnUNetDeconverPlans.json`` next to
it. Only the ``architecture`` entries change: every configuration keeps its data_identifier, so the
new plans share the preprocessed data and nnUNetv2_train / nnUNetv2_predict with
``-p nnUNetDeconverPlans`` build the preset's network. The source plans are never modified, and an
existing derived plans file with different content is never replaced.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path

from nnunetv2.paths import nnUNet_preprocessed
from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

from nnunet_deconver.nnunet.presets import Preset

DEFAULT_DERIVED_PLANS = "nnUNetDeconverPlans"


def derive_plans(plans: dict, presets: Sequence[Preset], plans_name: str, source_plans: str) -> dict:
    """Return a copy of ``plans`` with each configuration's architecture taken from the preset of its dimension.

    Raises:
        ValueError: two presets for one dimension, or no configuration of any preset's dimension.
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
        configuration["architecture"] = preset.architecture(configuration["architecture"], name, configuration)
        applied[name] = preset.name
    if not applied:
        raise ValueError(
            f"The plans have no configuration of dimension {sorted(by_dimension)}; their configurations are "
            f"{sorted(derived['configurations'])}."
        )
    derived["plans_name"] = plans_name
    derived["nnunet_deconver"] = {"source_plans": source_plans, "presets": applied}
    return derived


def write_derived_plans(
    dataset: str | int,
    presets: Sequence[Preset],
    source_plans: str = "nnUNetPlans",
    plans_name: str = DEFAULT_DERIVED_PLANS,
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
    derived_text = json.dumps(
        derive_plans(json.loads(source_file.read_text()), presets, plans_name, source_plans), indent=4
    ) + "\n"
    target = folder / f"{plans_name}.json"
    if target.exists() and target.read_text() != derived_text:
        raise FileExistsError(
            f"{target} exists with other content (models trained with it would change); delete it or choose "
            f"another name with -o."
        )
    target.write_text(derived_text)
    return target
