"""Shared fixtures of every test tier (unit, nnunet, fidelity, integration).

Plain helpers live in ``tests/support`` (importable as ``support``: pyproject.toml puts ``tests/`` on
pytest's ``pythonpath``); the fixtures here hand the most used ones to tests, fresh for each test.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from support.plans import nnunet_plans as _nnunet_plans
from support.processes import python_in_fresh_process


@pytest.fixture
def toy_plans() -> dict:
    """A new plans dict as nnUNetv2_plan_and_preprocess writes it (2d, 3d_fullres, an inheriting cascade)."""
    return _nnunet_plans()


@pytest.fixture
def fresh_python() -> Callable[..., str]:
    """Runs code in a new interpreter of this environment, started outside the repository; returns stdout."""
    return python_in_fresh_process
