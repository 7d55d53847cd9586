#!/usr/bin/env bash
# Baselines on CIFAR: NUM independent networks (no grafting), one process each, on the GPUs in GPUS.
#   MODEL=resnet56 CIFAR=100 NUM=2 ./grafting_cifar/baseline.sh
# Settings as grafting.sh; each baseline is a session of its own, S_1 .. S_NUM under S
# (checkpoint/baseline_<MODEL>_c<CIFAR>), so they never graft with each other.
set -u
source "$(dirname "$0")/../scripts/launch_lib.sh"
MODEL=${MODEL:-resnet32}
CIFAR=${CIFAR:-10}
NUM=${NUM:-1}
EPOCHS=${EPOCHS:-200}
LR=${LR:-0.1}
DATA=${DATA:-../data}
S=${S:-checkpoint/baseline_${MODEL}_c${CIFAR}}
check_count NUM "$NUM" || exit 2
runs=()
for run in $(seq 1 "$NUM"); do
    GPUS=$(gpu_for "$run") launch_ring "$REPO_ROOT/grafting_cifar/grafting.py" 1 "$S/run$run" \
        --model "$MODEL" --cifar "$CIFAR" --epochs "$EPOCHS" --lr "$LR" --data "$DATA" "$@" &
    runs+=($!)
done
# each run's launcher stops its network on SIGTERM
trap 'kill -s TERM "${runs[@]}" 2>/dev/null' INT TERM
status=0
for job in "${runs[@]}"; do
    while :; do
        wait "$job"
        rc=$?
        kill -0 "$job" 2>/dev/null || break  # still running: a signal broke off the wait
    done
    [ "$rc" -eq 0 ] || status=$rc
done
exit $status
