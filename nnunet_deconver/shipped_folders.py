"""Where the repository's top-level ``trainers/`` and ``plans/`` folders are, installed or not.

The source tree keeps them at the repository root, next to the package (the layout the user asked
for). The wheel force-includes them as ``nnunet_deconver/_shipped/trainers`` and
``nnunet_deconver/_shipped/plans`` (pyproject.toml). An installed wheel therefore finds them inside
the package, a source checkout or an editable install (``pip install -e .``) at the repository root.
Only ``os`` is imported: :mod:`nnunet_deconver._trainer_discovery` runs this at interpreter start-up.
"""

import os

_PACKAGE_FOLDER = os.path.dirname(os.path.abspath(__file__))
SHIPPED_SUBFOLDER = "_shipped"


def shipped_folder(name: str) -> str:
    """Absolute path of the top-level folder ``name`` ("trainers" or "plans") of this installation."""
    inside_package = os.path.join(_PACKAGE_FOLDER, SHIPPED_SUBFOLDER, name)
    if os.path.isdir(inside_package):
        return inside_package
    return os.path.join(os.path.dirname(_PACKAGE_FOLDER), name)
