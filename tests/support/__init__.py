"""Helpers shared by the test tiers (plans fabricated like nnU-Net writes them, subprocesses, training checks).

Importable as ``support`` because pyproject.toml puts ``tests/`` on pytest's ``pythonpath``; the
fixtures in ``tests/conftest.py`` hand the same helpers to tests that prefer fixtures.
"""
