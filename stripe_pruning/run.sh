#!/usr/bin/env bash
# The paper's stripe-wise pruning runs for one architecture: the baseline (no skeleton sparsity) and
# --sr 1e-5 --threshold 0.01, each trained 160 epochs, then pruned and reported (prune.json).
#   ARCH=VGG GPUS=0 ./stripe_pruning/run.sh
#   ARCH=ResNet56 GPUS=0,1 ./stripe_pruning/run.sh          # two GPUs: both runs side by side
# Environment: ARCH (VGG | ResNet56 | ResNet18), S (checkpoint/stripe_<ARCH>; the runs go to S/baseline
# and S/sr<SR>_t<THRESHOLD>), GPUS (all; none: CPU), DATA (../data), EPOCHS (160), SR (1e-5),
# THRESHOLD (0.01), NUM_CLASSES (10). Flags given are passed to both runs.
set -u
source "$(dirname "$0")/../scripts/launch_lib.sh"
ARCH=${ARCH:-VGG}
S=${S:-checkpoint/stripe_${ARCH}}
DATA=${DATA:-../data}
EPOCHS=${EPOCHS:-160}
SR=${SR:-1e-5}
THRESHOLD=${THRESHOLD:-0.01}
NUM_CLASSES=${NUM_CLASSES:-10}
mkdir -p "$S" || exit 1

run() {  # run INDEX NAME FLAGS...: one training on GPU number INDEX of GPUS, console in S/NAME.out
    local gpu name=$2
    gpu=$(gpu_for "$1")
    shift 2
    echo "$name on ${gpu:+GPU $gpu}${gpu:-CPU}: $S/$name"
    CUDA_VISIBLE_DEVICES=$gpu "$PYTHON" "$REPO_ROOT/stripe_pruning/main.py" --arch "$ARCH" --data_path "$DATA" \
        --num_classes "$NUM_CLASSES" --epochs "$EPOCHS" --save "$S/$name" "$@" >"$S/$name.out" 2>&1
}

run 1 baseline "$@" &
baseline=$!
base=
if [ -z "$(gpu_for 2)" ] || [ "$(gpu_for 2)" = "$(gpu_for 1)" ]; then  # one device: one run after the other
    wait "$baseline"
    base=$?
fi
run 2 "sr${SR}_t${THRESHOLD}" --sr "$SR" --threshold "$THRESHOLD" "$@"
pruned=$?
if [ -z "$base" ]; then
    wait "$baseline"
    base=$?
fi
echo "baseline: exit $base; sr $SR threshold $THRESHOLD: exit $pruned"
[ "$base" -eq 0 ] && [ "$pruned" -eq 0 ]
