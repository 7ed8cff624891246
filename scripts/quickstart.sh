#!/usr/bin/env bash
# One command for a new user: set everything up, then run the default sweep
# (LeNet-300-100 on Fashion-MNIST; 4 methods x 5 sparsity levels, 1 fine-tune epoch each)
# and write the report to runs/quickstart/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/prunelab sweep --out runs/quickstart "$@"
echo "open runs/quickstart/report.html"
