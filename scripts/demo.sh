#!/usr/bin/env bash
# Installs what is needed (scripts/install.sh) and runs the end-to-end demo:
# MNI152 tissue dataset -> nnUNetv2_plan_and_preprocess -> nnUNetv2_train (Deconver and nnU-Net's own trainer)
# -> nnUNetv2_predict -> one Dice table for both and a PNG of a held-out case.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
VENV="${VENV:-.venv}"
"$VENV/bin/nnunet-deconver" demo "$@"
