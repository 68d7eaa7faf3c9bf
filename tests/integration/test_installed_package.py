"""The package as a user installs it: the wheel (``pip install .``) and an editable install (``pip install -e .``).

Each test builds or installs the package into a fresh virtual environment that holds nothing of the
package but what that install put there (the heavy dependencies, torch and nnunetv2, come from this
environment's site-packages, appended after the fresh one's). In a new interpreter started outside
the repository, ``-tr nnUNetTrainerDeconver`` must resolve through nnU-Net's own trainer search and
every preset of the repository's ``plans/`` folder must load.
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from nnunet_deconver.nnunet.presets import available_presets

pytestmark = pytest.mark.slow

REPOSITORY = Path(__file__).resolve().parents[2]

CHECK = """
import json, os
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
import nnunet_deconver
from nnunet_deconver.nnunet.presets import PRESET_FOLDER, available_presets, load_preset
trainer = recursive_find_trainer_class_by_name("nnUNetTrainerDeconver")
presets = {name: load_preset(name).network_class_name for name in available_presets()}
print(json.dumps({"package": nnunet_deconver.__file__, "trainer": trainer.__module__, "presets": sorted(presets),
                  "preset_folder": str(PRESET_FOLDER), "ext_trainer": os.environ["nnUNet_extTrainer"]}))
"""


def fresh_environment(folder: Path) -> Path:
    """A new venv whose own site-packages comes first; this environment's packages are visible after it."""
    venv.create(folder, with_pip=False)
    python = folder / "bin" / "python"
    own = subprocess.run([str(python), "-c", "import site; print(site.getsitepackages()[0])"],
                         capture_output=True, text=True, check=True).stdout.strip()
    (Path(own) / "zz_shared_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python


def pip(*arguments: str, target_python: Path) -> None:
    """This environment's pip, installing into ``target_python``'s environment without dependencies.

    ``--ignore-installed``: the package is also installed in this environment, which the fresh one
    sees after its own site-packages; pip would otherwise call it satisfied and install nothing.
    """
    command = [sys.executable, "-m", "pip", "--python", str(target_python), "install", "--no-deps",
               "--ignore-installed", "--quiet", *arguments]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPOSITORY)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def check_in_new_interpreter(python: Path) -> dict:
    env = {key: value for key, value in os.environ.items() if key not in ("nnUNet_extTrainer", "PYTHONPATH")}
    result = subprocess.run([str(python), "-c", CHECK], capture_output=True, text=True, cwd="/", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_wheel_alone_provides_the_trainers_and_every_preset(tmp_path: Path) -> None:
    wheel_folder = tmp_path / "wheel"
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(wheel_folder),
                             str(REPOSITORY)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = wheel_folder.glob("nnunet_deconver-*.whl")
    python = fresh_environment(tmp_path / "venv")
    pip(str(wheel), target_python=python)
    found = check_in_new_interpreter(python)
    installed = str(tmp_path / "venv")
    assert found["package"].startswith(installed)
    assert found["trainer"] == "nnunet_deconver.nnunet.trainers.deconver"
    assert found["ext_trainer"].startswith(installed) and found["ext_trainer"].endswith("_shipped/trainers")
    assert found["preset_folder"].startswith(installed)
    assert found["presets"] == sorted(available_presets())  # the repository's plans/, all of them


def test_an_editable_install_finds_them_in_the_repository(tmp_path: Path) -> None:
    python = fresh_environment(tmp_path / "venv")
    pip("-e", str(REPOSITORY), target_python=python)
    found = check_in_new_interpreter(python)
    assert found["package"] == str(REPOSITORY / "nnunet_deconver" / "__init__.py")
    assert found["trainer"] == "nnunet_deconver.nnunet.trainers.deconver"
    assert found["ext_trainer"] == str(REPOSITORY / "trainers")
    assert found["preset_folder"] == str(REPOSITORY / "plans")
    assert found["presets"] == sorted(available_presets())
