#!/usr/bin/env bash
# Filter grafting on ImageNet: NUM networks, one process each, pinned round-robin to the GPUs in GPUS.
#   ARCH=resnet18 NUM=2 GPUS=0,1 DATA=/data/imagenet ./grafting_imagenet/grafting.sh --cos
# Settings (environment): ARCH (resnet18), NUM (2), GPUS (all), DATA (imagenet: a folder with train/
# and val/), S (session dir, checkpoint/grafting_imagenet_<ARCH>_n<NUM>), EPOCHS (90), LR (0.1).
# Any flags given are passed to every network (e.g. -b 128 -j 8, or --resume to continue the session).
# Several GPUs or machines: EXCHANGE, RANKS_PER_NETWORK (each network on M torchrun ranks), NPROC_PER_NODE,
# NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT, as scripts/launch_lib.sh says.
set -u
source "$(dirname "$0")/../scripts/launch_lib.sh"
ARCH=${ARCH:-resnet18}
NUM=${NUM:-2}
EPOCHS=${EPOCHS:-90}
LR=${LR:-0.1}
DATA=${DATA:-imagenet}
S=${S:-checkpoint/grafting_imagenet_${ARCH}_n${NUM}}
launch_ring "$REPO_ROOT/grafting_imagenet/grafting.py" "$NUM" "$S" \
    --arch "$ARCH" --epochs "$EPOCHS" --lr "$LR" --data "$DATA" "$@"
