#!/usr/bin/env bash
# Install fmrilm-bids with its test tools into .venv, then lint and run the test suite.
# Extra arguments go to pytest (e.g. scripts/test.sh -k cli).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install.sh --dev
.venv/bin/ruff check .
.venv/bin/lint-imports
.venv/bin/pytest -n auto --dist loadfile "$@"
