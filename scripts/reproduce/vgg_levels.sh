#!/usr/bin/env bash
# SPEC §9, VGG16 grafting levels: baseline, layer-level and filter-level grafting (2 networks) on CIFAR-10
# and CIFAR-100, 200 epochs.
# GPUs: 2 (one per network; the 6 configurations run one after another).
#   GPUS=0,1 DATA=../data ./scripts/reproduce/vgg_levels.sh
# Environment: GPUS, DATA, RUNS (runs/vgg_levels), CIFARS, EPOCHS, DRY_RUN=1 (print only).
set -u
RUNS=${RUNS:-runs/vgg_levels}
source "$(dirname "$0")/common.sh"
LAUNCH=$REPO_ROOT/grafting_cifar
for cifar in ${CIFARS:-10 100}; do
    config "vgg16_c${cifar}_baseline" MODEL=vgg16 CIFAR="$cifar" NUM=1 bash "$LAUNCH/baseline.sh" "$@"
    # the release's VGG script made both rows: conv weights and their BatchNorms mixed, conv biases and the
    # classifier each network's own (--conv-only; always so at the filter level)
    config "vgg16_c${cifar}_layer" MODEL=vgg16 CIFAR="$cifar" NUM=2 bash "$LAUNCH/grafting.sh" --level layer --conv-only "$@"
    config "vgg16_c${cifar}_filter" MODEL=vgg16 CIFAR="$cifar" NUM=2 bash "$LAUNCH/grafting.sh" --level filter "$@"
done
finish
