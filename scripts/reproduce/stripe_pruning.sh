#!/usr/bin/env bash
# SPEC §5/§9, stripe-wise pruning on CIFAR-10: VGG16 and ResNet56 trained with the Filter Skeleton's
# sparsity (160 epochs), pruned, and reported (params, FLOPs, accuracy before and after pruning).
# GPUs: 1 (one network per run; the 2 configurations run one after another).
#   GPUS=0 DATA=../data ./scripts/reproduce/stripe_pruning.sh
# Environment: everything stripe_pruning/run.sh reads (GPUS, DATA, EPOCHS, SR, THRESHOLD, ...) passes
# through; ARCHS (VGG ResNet56), RUNS (runs/stripe_pruning), DRY_RUN=1 (print only). Each run goes to
# S=RUNS/<arch>_c10. Flags given are passed to every run.
set -u
RUNS=${RUNS:-runs/stripe_pruning}
source "$(dirname "$0")/common.sh"
for arch in ${ARCHS:-VGG ResNet56}; do
    config "${arch}_c10" ARCH="$arch" bash "$REPO_ROOT/stripe_pruning/run.sh" "$@"
done
finish
