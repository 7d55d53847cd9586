#!/usr/bin/env bash
# SPEC §9, MobileNetV2 with N networks: dlr grafting (--difflr --cos) of N = 2, 3, 4, 6, 8 networks on
# CIFAR-10 and CIFAR-100, 200 epochs. (The paper's 6-model ensemble row is not reproduced here.)
# GPUs: 8 (one per network of the largest ring; with fewer, networks share GPUs round-robin).
#   GPUS=0,1,2,3,4,5,6,7 DATA=../data ./scripts/reproduce/multiple_networks.sh
# Environment: GPUS, DATA, RUNS (runs/multiple_networks), NUMS, CIFARS, EPOCHS, DRY_RUN=1 (print only).
set -u
RUNS=${RUNS:-runs/multiple_networks}
source "$(dirname "$0")/common.sh"
for cifar in ${CIFARS:-10 100}; do
    for num in ${NUMS:-2 3 4 6 8}; do
        config "mobilenetv2_c${cifar}_n${num}" MODEL=mobilenetv2 CIFAR="$cifar" NUM="$num" \
            bash "$REPO_ROOT/grafting_cifar/grafting.sh" --difflr --cos "$@"
    done
done
finish
