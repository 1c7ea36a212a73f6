#!/usr/bin/env bash
# Sets up a virtualenv from nothing and runs the test suite (offline, CPU).
#   bash scripts/test.sh                 # everything
#   bash scripts/test.sh -k masking      # extra arguments go to pytest
# VENV=path picks the virtualenv (default .venv); it is created when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
source scripts/setup_browser.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# a private datasets cache, so runs never read another checkout's stale cache files
export HF_DATASETS_CACHE="${HF_DATASETS_CACHE:-$PWD/.cache/datasets}"
python -m pytest -n "${PYTEST_WORKERS:-2}" --dist loadfile "$@"
