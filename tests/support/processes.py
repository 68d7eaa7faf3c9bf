"""Fresh interpreters and nnU-Net console scripts, started as a user's shell would start them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def python_in_fresh_process(code: str, **env_overrides: str | None) -> str:
    """Run ``code`` in a new interpreter of this environment (outside the repository); return its stdout."""
    env = {k: v for k, v in os.environ.items() if k != "nnUNet_extTrainer"}
    env.update({k: v for k, v in env_overrides.items() if v is not None})
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd="/")
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def run_console_script(command: list[str], env: dict[str, str]) -> str:
    """Run a console script of this environment (nnUNetv2_*, nnunet-deconver); fail with its output on error.

    ``nnUNet_extTrainer`` is removed: only the installed discovery hook may provide it.
    """
    env = {k: v for k, v in env.items() if k != "nnUNet_extTrainer"}
    executable = str(Path(sys.executable).parent / command[0])
    result = subprocess.run([executable, *command[1:]], env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result.stdout
