#!/usr/bin/env bash
# SPEC §9, CIFAR table: ResNet32/56/110 and MobileNetV2 on CIFAR-10 and CIFAR-100, each as a baseline,
# grafting with the same learning rate (slr) and grafting with --difflr --cos (dlr), 2 networks, 200 epochs.
# GPUs: 2 (one per network of a grafting run; the 24 configurations run one after another).
#   GPUS=0,1 DATA=../data ./scripts/reproduce/cifar_grafting.sh
# Environment: GPUS, DATA, RUNS (runs/cifar_grafting), MODELS, CIFARS (to run a part: copies with other
# MODELS and GPUS share the work of a bigger box), EPOCHS, BASELINE_RUNS (1), DRY_RUN=1 (print only).
# Flags given are passed to every run (e.g. --amp --channels-last).
set -u
RUNS=${RUNS:-runs/cifar_grafting}
source "$(dirname "$0")/common.sh"
LAUNCH=$REPO_ROOT/grafting_cifar
for model in ${MODELS:-resnet32 resnet56 resnet110 mobilenetv2}; do
    for cifar in ${CIFARS:-10 100}; do
        on="MODEL=$model CIFAR=$cifar"
        config "${model}_c${cifar}_baseline" $on NUM="${BASELINE_RUNS:-1}" bash "$LAUNCH/baseline.sh" "$@"
        config "${model}_c${cifar}_slr" $on NUM=2 bash "$LAUNCH/grafting.sh" "$@"
        config "${model}_c${cifar}_dlr" $on NUM=2 bash "$LAUNCH/grafting.sh" --difflr --cos "$@"
    done
done
finish
