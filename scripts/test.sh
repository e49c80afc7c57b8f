#!/usr/bin/env bash
# Set up a virtual environment (once) and run the whole test suite.
# Shared assets (weights, WIDER FACE subset) come from $FDQ_SHARED, default ../shared.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null
python -m pip install -q torch==2.13.0 -e '.[test,export]'
bash scripts/install_runtimes.sh  # MNN and ExecuTorch (tests/test_runtimes.py)
export FDQ_SHARED="${FDQ_SHARED:-$(cd .. && pwd)/shared}"
export FDQ_WEIGHTS_PATH="${FDQ_WEIGHTS_PATH:-$FDQ_SHARED/weights}"
export FDQ_HOME="${FDQ_HOME:-$PWD/.venv/fdq-home}"
python -m pytest -q -p no:cacheprovider --durations=25 "$@"
