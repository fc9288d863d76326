#!/usr/bin/env bash
# Install fmrilm-bids into .venv, simulate the demo dataset, run participant then group level.
#   FMRILM_DEMO_DIR  where the demo dataset, work dir and derivatives go (default: ./demo)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install.sh
demo=${FMRILM_DEMO_DIR:-demo}
bin=.venv/bin
"$bin/fmrilm-bids-simulate" "$demo/bids" --overwrite
"$bin/fmrilm-bids" "$demo/bids" "$demo/derivatives" participant -w "$demo/work"
"$bin/fmrilm-bids" "$demo/bids" "$demo/derivatives" group -w "$demo/work"
echo "Derivatives: $(cd "$demo/derivatives" && pwd)"
reports=("$demo"/derivatives/sub-*.html)
[ -e "${reports[0]}" ] && echo "Reports: ${reports[*]}"
