#!/usr/bin/env bash
# SPEC §9, grafting+ on CIFAR-100: for each teacher -> student pair (ResNet56 -> ResNet32, ResNet110 ->
# ResNet56, ResNet110 -> MobileNetV2), the teacher (trained once per architecture, 200 epochs), then
# baseline, grafting (2 students), distillation and grafting+ (2 students), 200 epochs each.
# GPUs: 2 (one per student of a grafting run; everything runs one after another).
#   GPUS=0,1 DATA=../data ./scripts/reproduce/grafting_plus.sh
# Environment: GPUS, DATA, RUNS (runs/grafting_plus), PAIRS ("teacher:student ..."), EPOCHS, T,
# DRY_RUN=1 (print only). Flags given are passed to the student runs.
set -u
RUNS=${RUNS:-runs/grafting_plus}
source "$(dirname "$0")/common.sh"
for pair in ${PAIRS:-resnet56:resnet32 resnet110:resnet56 resnet110:mobilenetv2}; do
    teacher=${pair%%:*} student=${pair##*:}
    config "${teacher}_${student}" TEACHER="$teacher" STUDENT="$student" CIFAR=100 \
        TEACHER_S="$RUNS/teacher_${teacher}_c100" bash "$REPO_ROOT/grafting_plus/grafting+.sh" "$@"
done
finish
