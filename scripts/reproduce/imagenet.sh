#!/usr/bin/env bash
# SPEC §9, ImageNet: ResNet18/34/50 as a baseline (1 network) and grafted (2 networks), 90 epochs, top-1
# and top-5, and a cosine baseline beside them.
# GPUs: 2 (one per network; the 9 configurations run one after another).
#   GPUS=0,1 DATA=/data/imagenet ./scripts/reproduce/imagenet.sh -j 16
# Environment: DATA (required: a folder with train/ and val/), GPUS, RUNS (runs/imagenet), ARCHS, EPOCHS,
# DRY_RUN=1 (print only). Flags given are passed to every run (e.g. -b 256 -j 16 --amp).
set -u
: "${DATA:?set DATA to the ImageNet folder holding train/ and val/}"
export DATA
RUNS=${RUNS:-runs/imagenet}
source "$(dirname "$0")/common.sh"
# As the release ran the table: the baseline with ×0.1 steps every 30 epochs (its baseline script), grafting
# with the per-iteration cosine (its grafting script); then the fair row, the baseline with cosine too, which
# the release's maintainer called the missing comparison (SPEC §9).
for arch in ${ARCHS:-resnet18 resnet34 resnet50}; do
    config "${arch}_baseline" ARCH="$arch" NUM=1 bash "$REPO_ROOT/grafting_imagenet/grafting.sh" --steplr "$@"
    config "${arch}_grafting" ARCH="$arch" NUM=2 bash "$REPO_ROOT/grafting_imagenet/grafting.sh" "$@"
    config "${arch}_baseline_cosine_fair" ARCH="$arch" NUM=1 bash "$REPO_ROOT/grafting_imagenet/grafting.sh" "$@"
done
finish
