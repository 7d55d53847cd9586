#!/usr/bin/env bash
# The demo: on scikit-learn's digits (offline, CPU), train a ResNet20 baseline and a 2-network grafting
# session, then print their accuracies and invalid filters side by side, and the sessions' summary.
# Recreates runs/demo each time. EPOCHS (15) and MODEL (resnet20) can be set from the environment.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
export PYTHON
EPOCHS=${EPOCHS:-15}
MODEL=${MODEL:-resnet20}
DEMO=runs/demo
rm -rf "$DEMO"
FLAGS=(--dataset digits --model "$MODEL" --epochs "$EPOCHS" --cos --seed 0 --workers 0 --print_frequence 100)

start=$(date +%s)
echo "== baseline: 1 network, $EPOCHS epochs on digits"
S=$DEMO/baseline NUM=1 bash grafting_cifar/grafting.sh "${FLAGS[@]}"
echo "== grafting: 2 networks, $EPOCHS epochs on digits"
S=$DEMO/grafting NUM=2 bash grafting_cifar/grafting.sh "${FLAGS[@]}"
"$PYTHON" scripts/demo_table.py "$DEMO/baseline" "$DEMO/grafting"
echo "== summary of the demo's sessions"
"$PYTHON" scripts/summarize.py "$DEMO/grafting" --baseline "$DEMO/baseline"
echo "demo finished in $(( $(date +%s) - start ))s; sessions in $DEMO"
