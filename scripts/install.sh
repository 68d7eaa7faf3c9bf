#!/usr/bin/env bash
# Creates (or reuses) the virtual environment $VENV (default: .venv) and installs nnunet-deconver
# into it, non-editable, with its test extras. torch and torchvision are pinned first: nnunetv2's
# dependency chain (timm -> torchvision) would otherwise pick them itself.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
"$VENV/bin/python" -m pip install --quiet ".[test]"
"$VENV/bin/python" -m pip list 2>/dev/null | grep -E "^(torch|torchvision|nnunetv2|nnunet-deconver) "
