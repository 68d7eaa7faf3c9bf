"""The analysis commands never replace a file: they refuse, before any work, when an output exists."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


def refuse_existing_outputs(targets: Iterable[Path]) -> None:
    """Raise FileExistsError naming every target that exists already (the user chooses another -o)."""
    existing = [str(path) for path in targets if path.exists()]
    if existing:
        raise FileExistsError(f"{', '.join(existing)} exist already; choose another -o.")
