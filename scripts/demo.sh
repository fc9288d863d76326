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
# Short training, so that the demo runs in minutes on a laptop CPU (the defaults train for
# epochs of the data: 400 for the tokenizer, 1 and 2 for the language model's stages).
"$bin/fmrilm-bids" "$demo/bids" "$demo/derivatives" group -w "$demo/work" \
    --tokenizer-steps 300 --lm-steps 10
echo "Derivatives: $(cd "$demo/derivatives" && pwd)"
reports=("$demo"/derivatives/sub-*.html)
[ -e "${reports[0]}" ] && echo "Reports: ${reports[*]}"
echo "Model: $(cd "$demo/derivatives/models/fmrilm" && pwd) (held-out results: group.html)"
