#!/usr/bin/env bash
# Grafting+ table for one teacher -> student pair (SPEC §4, §9): trains the teacher when its checkpoint is
# missing, then the four rows baseline (1 student), grafting (2 students), distillation (1 student +
# teacher) and grafting+ (2 students + teacher), one process per network pinned round-robin to GPUS,
# and prints each row's best test accuracy per network and their mean.
#   TEACHER=resnet56 STUDENT=resnet32 CIFAR=100 GPUS=0,1 ./grafting_plus/grafting+.sh --cos
# Settings (environment): TEACHER (resnet56), STUDENT (resnet32), CIFAR (100), DATASET (cifar; digits
# or fake run offline), EPOCHS (200), TEACHER_EPOCHS (EPOCHS), LR (0.1: the teacher's and the one-student
# rows' rate), STUDENT_LRS ("0.1 0.05": the two-student rows' rates, network 1 then 2, as the release's
# launcher; empty: LR for both), T (2, the temperature),
# WORKERS (2), DATA (../data), GPUS (all), S (checkpoint/grafting_plus_<TEACHER>_<STUDENT>_c<CIFAR>),
# TEACHER_S (S/teacher: the teacher's session; its best_1.t7 is the teacher), PACK (1: each row's students in
# one process per GPU, --pack), ROW_NAMES (the rows to train, of "baseline grafting distillation grafting+";
# empty: the teacher only).
# Flags given are passed to the four student rows. A row already trained is kept; one cut short resumes.
# Several GPUs or machines: EXCHANGE, RANKS_PER_NETWORK (each network on M torchrun ranks), NPROC_PER_NODE,
# NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT, as scripts/launch_lib.sh says.
set -u
source "$(dirname "$0")/../scripts/launch_lib.sh"
TEACHER=${TEACHER:-resnet56}
STUDENT=${STUDENT:-resnet32}
CIFAR=${CIFAR:-100}
DATASET=${DATASET:-cifar}
EPOCHS=${EPOCHS:-200}
TEACHER_EPOCHS=${TEACHER_EPOCHS:-$EPOCHS}
LR=${LR:-0.1}
read -r -a LRS <<< "${STUDENT_LRS-0.1 0.05}"
T=${T:-2}
WORKERS=${WORKERS:-2}
DATA=${DATA:-../data}
S=${S:-checkpoint/grafting_plus_${TEACHER}_${STUDENT}_c${CIFAR}}
TEACHER_S=${TEACHER_S:-$S/teacher}
COMMON=(--dataset "$DATASET" --data "$DATA" --lr "$LR" --workers "$WORKERS")

# query table ROOT TEACHER_DIR "NAME NUM"...: the table of best test accuracies of the rows under ROOT.
# query file DIR I KIND: the path of network I's KIND (log, metrics, best, last) in session DIR.
query() {
    "$PYTHON" -m filtergraft.results.launcher "$@"
}
declare -A STUDENTS=([baseline]=1 [grafting]=2 [distillation]=1 [grafting+]=2)
ROWS=()
for name in ${ROW_NAMES-baseline grafting distillation grafting+}; do
    [ -n "${STUDENTS[$name]:-}" ] || { echo "error: ROW_NAMES: no row '$name'; the rows are baseline grafting distillation grafting+" >&2; exit 2; }
    ROWS+=("$name ${STUDENTS[$name]}")
done
TEACHER_CKPT=$(query file "$TEACHER_S" 1 best) || exit 1

echo "== teacher $TEACHER ($TEACHER_S)"
train_session "$REPO_ROOT/grafting_cifar/grafting.py" 1 "$TEACHER_S" "$TEACHER_EPOCHS" --model "$TEACHER" --cifar "$CIFAR" \
    "${COMMON[@]}" && [ -f "$TEACHER_CKPT" ] || {
    rc=$?
    [ "$rc" -ge 128 ] && exit "$rc"  # stopped by a signal: no more rows
    echo "no trained teacher $TEACHER_CKPT; see $(query file "$TEACHER_S" 1 log)"
    exit 1
}

STUDENT_FLAGS=(--arch "$STUDENT" --num_classes "$CIFAR" "${COMMON[@]}")
TEACHER_FLAGS=(--teacher_arch "$TEACHER" --teacher_dir "$TEACHER_CKPT" --T "$T")
SCRIPT=$REPO_ROOT/grafting_plus/grafting+.py
status=0
for row in "${ROWS[@]}"; do
    read -r name num <<< "$row"
    echo "== $name: $num student(s)"
    teacher=() rates=()
    case $name in distillation|grafting+) teacher=("${TEACHER_FLAGS[@]}") ;; esac
    [ "$num" -gt 1 ] && [ ${#LRS[@]} -gt 0 ] && rates=(--lr-per-network "${LRS[@]}")
    train_session "$SCRIPT" "$num" "$S/$name" "$EPOCHS" "${STUDENT_FLAGS[@]}" "${rates[@]}" "${teacher[@]}" "$@" || {
        rc=$?
        [ "$rc" -ge 128 ] && exit "$rc"  # stopped by a signal: no more rows
        status=1
    }
done

[ ${#ROWS[@]} -gt 0 ] || exit $status
echo
echo "Grafting+ $TEACHER -> $STUDENT, ${DATASET} with $CIFAR classes, best test accuracy (%):"
query table "$S" "$TEACHER_S" "${ROWS[@]}"
exit $status
