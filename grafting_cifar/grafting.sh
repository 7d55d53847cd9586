#!/usr/bin/env bash
# Filter grafting on CIFAR: NUM networks, one process each, pinned round-robin to the GPUs in GPUS.
#   MODEL=resnet56 CIFAR=10 NUM=2 GPUS=0,1 ./grafting_cifar/grafting.sh --cos --difflr
# Settings (environment): MODEL (resnet32), CIFAR (10), NUM (2), GPUS (all), S (session dir,
# checkpoint/grafting_<MODEL>_c<CIFAR>_n<NUM>), EPOCHS (200), LR (0.1), DATA (../data).
# PACK=1: the networks in one process per GPU of GPUS (contiguous packs; one pack on the CPU), each exactly
# the network its own process would train (--pack). Any flags given are passed to every network.
# Several GPUs or machines: EXCHANGE, RANKS_PER_NETWORK (each network on M torchrun ranks), NPROC_PER_NODE,
# NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT, as scripts/launch_lib.sh says.
set -u
source "$(dirname "$0")/../scripts/launch_lib.sh"
MODEL=${MODEL:-resnet32}
CIFAR=${CIFAR:-10}
NUM=${NUM:-2}
EPOCHS=${EPOCHS:-200}
LR=${LR:-0.1}
DATA=${DATA:-../data}
S=${S:-checkpoint/grafting_${MODEL}_c${CIFAR}_n${NUM}}
launch_session "$REPO_ROOT/grafting_cifar/grafting.py" "$NUM" "$S" \
    --model "$MODEL" --cifar "$CIFAR" --epochs "$EPOCHS" --lr "$LR" --data "$DATA" "$@"
