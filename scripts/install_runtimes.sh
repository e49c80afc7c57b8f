#!/usr/bin/env bash
# Install the MNN and ExecuTorch runtimes into the active Python environment (fdq's `mnn` and
# `executorch` extras, pinned in setup.py), keeping the torch that is already there.
#
# MNN installs as usual. executorch and torchao install with --no-deps: their declared dependencies
# (pandas, coremltools, scikit-learn, hydra, pytorch-tokenizers, ...) serve other backends and
# LLM tooling, not the XNNPACK export and runtime fdq uses; the constraint keeps pip from replacing
# torch. What that path does import is installed explicitly: ruamel.yaml, flatbuffers, tabulate.
set -euo pipefail
PY="${PYTHON:-python}"
TORCH_VERSION="$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')"
constraint="$(mktemp)"
trap 'rm -f "$constraint"' EXIT
echo "torch==$TORCH_VERSION" > "$constraint"
"$PY" -m pip install -q -c "$constraint" "MNN==3.6.1" "ruamel.yaml>=0.17" "flatbuffers>=24" "tabulate>=0.9"
"$PY" -m pip install -q --no-deps -c "$constraint" "executorch==1.5.1" "torchao==0.18.0"
