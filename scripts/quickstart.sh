#!/usr/bin/env bash
# One command for a new user: set everything up, then run the default sweep
# (LeNet-300-100 on Fashion-MNIST: magnitude and random x global and uniform x 5 sparsity
# levels x 3 seeds, 1 fine-tune epoch each, plus dense controls)
# and write the report to runs/quickstart/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/prunelab sweep --out runs/quickstart --seeds 0,1,2 "$@"
echo "open runs/quickstart/report.html"
