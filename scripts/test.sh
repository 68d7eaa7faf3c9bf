#!/usr/bin/env bash
# Installs what is needed (scripts/install.sh) and runs the whole test suite, slow tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
VENV="${VENV:-.venv}"
"$VENV/bin/pytest" -ra "$@"
