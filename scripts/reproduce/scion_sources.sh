#!/usr/bin/env bash
# SPEC §9, scion sources: MobileNetV2 on CIFAR-10 and CIFAR-100 as a baseline, with a noise scion, an
# internal scion (1 network each) and an external scion (grafting, 2 networks), 200 epochs.
# GPUs: 2 (the external run's networks, one GPU each; the 8 configurations run one after another).
#   GPUS=0,1 DATA=../data ./scripts/reproduce/scion_sources.sh
# Environment: GPUS, DATA, RUNS (runs/scion_sources), CIFARS, EPOCHS, DRY_RUN=1 (print only).
set -u
RUNS=${RUNS:-runs/scion_sources}
source "$(dirname "$0")/common.sh"
LAUNCH=$REPO_ROOT/grafting_cifar
for cifar in ${CIFARS:-10 100}; do
    on="MODEL=mobilenetv2 CIFAR=$cifar"
    config "mobilenetv2_c${cifar}_baseline" $on NUM=1 bash "$LAUNCH/baseline.sh" "$@"
    config "mobilenetv2_c${cifar}_noise" $on NUM=1 bash "$LAUNCH/grafting.sh" --source noise "$@"
    config "mobilenetv2_c${cifar}_internal" $on NUM=1 bash "$LAUNCH/grafting.sh" --source internal "$@"
    config "mobilenetv2_c${cifar}_external" $on NUM=2 bash "$LAUNCH/grafting.sh" --source external "$@"
done
finish
