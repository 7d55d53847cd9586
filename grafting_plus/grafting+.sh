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
# one process per GPU, --pack).
# Flags given are passed to the four student rows. A row already trained is kept; one cut short resumes.
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

# query done DIR NUM: the fewest epochs any of the NUM networks of session DIR has finished (0: none).
# query table ROOT TEACHER_DIR "NAME NUM"...: the table of best test accuracies of the rows under ROOT.
# query file DIR I KIND: the path of network I's KIND (log, metrics, best, last) in session DIR.
query() {
    "$PYTHON" -m filtergraft.results.launcher "$@"
}
TEACHER_CKPT=$(query file "$TEACHER_S" 1 best) || exit 1

# run SCRIPT NUM DIR EPOCHS FLAGS...: launch_ring, skipped when done, resumed when cut short.
run() {
    local script=$1 num=$2 dir=$3 epochs=$4 done
    shift 4
    done=$(query done "$dir" "$num") || return 1
    if [ "$done" -ge "$epochs" ]; then
        echo "$dir: already trained for $done epochs, kept"
        return 0
    fi
    local resume=()
    [ "$done" -gt 0 ] && resume=(--resume) && echo "$dir: resuming after epoch $done"
    launch_session "$script" "$num" "$dir" --epochs "$epochs" "${resume[@]}" "$@"
}

echo "== teacher $TEACHER ($TEACHER_S)"
run "$REPO_ROOT/grafting_cifar/grafting.py" 1 "$TEACHER_S" "$TEACHER_EPOCHS" --model "$TEACHER" --cifar "$CIFAR" \
    "${COMMON[@]}" && [ -f "$TEACHER_CKPT" ] || {
    rc=$?
    [ "$rc" -ge 128 ] && exit "$rc"  # stopped by a signal: no more rows
    echo "no trained teacher $TEACHER_CKPT; see $(query file "$TEACHER_S" 1 log)"
    exit 1
}

STUDENT_FLAGS=(--arch "$STUDENT" --num_classes "$CIFAR" "${COMMON[@]}")
TEACHER_FLAGS=(--teacher_arch "$TEACHER" --teacher_dir "$TEACHER_CKPT" --T "$T")
SCRIPT=$REPO_ROOT/grafting_plus/grafting+.py
ROWS=("baseline 1" "grafting 2" "distillation 1" "grafting+ 2")
status=0
for row in "${ROWS[@]}"; do
    read -r name num <<< "$row"
    echo "== $name: $num student(s)"
    teacher=() rates=()
    case $name in distillation|grafting+) teacher=("${TEACHER_FLAGS[@]}") ;; esac
    [ "$num" -gt 1 ] && [ ${#LRS[@]} -gt 0 ] && rates=(--lr-per-network "${LRS[@]}")
    run "$SCRIPT" "$num" "$S/$name" "$EPOCHS" "${STUDENT_FLAGS[@]}" "${rates[@]}" "${teacher[@]}" "$@" || {
        rc=$?
        [ "$rc" -ge 128 ] && exit "$rc"  # stopped by a signal: no more rows
        status=1
    }
done

echo
echo "Grafting+ $TEACHER -> $STUDENT, ${DATASET} with $CIFAR classes, best test accuracy (%):"
query table "$S" "$TEACHER_S" "${ROWS[@]}"
exit $status
