#!/usr/bin/env bash
# Grafting+ table for one teacher -> student pair (SPEC §4, §9): trains the teacher when its checkpoint is
# missing, then the four rows baseline (1 student), grafting (2 students), distillation (1 student +
# teacher) and grafting+ (2 students + teacher), one process per network pinned round-robin to GPUS,
# and prints each row's best test accuracy per network and their mean.
#   TEACHER=resnet56 STUDENT=resnet32 CIFAR=100 GPUS=0,1 ./grafting_plus/grafting+.sh --cos
# Settings (environment): TEACHER (resnet56), STUDENT (resnet32), CIFAR (100), DATASET (cifar; digits
# or fake run offline), EPOCHS (200), TEACHER_EPOCHS (EPOCHS), LR (0.1), T (2, the temperature),
# WORKERS (2), DATA (../data), GPUS (all), S (checkpoint/grafting_plus_<TEACHER>_<STUDENT>_c<CIFAR>),
# TEACHER_S (S/teacher: the teacher's session; its best_1.t7 is the teacher).
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
T=${T:-2}
WORKERS=${WORKERS:-2}
DATA=${DATA:-../data}
S=${S:-checkpoint/grafting_plus_${TEACHER}_${STUDENT}_c${CIFAR}}
TEACHER_S=${TEACHER_S:-$S/teacher}
TEACHER_CKPT=$TEACHER_S/best_1.t7
COMMON=(--dataset "$DATASET" --data "$DATA" --lr "$LR" --workers "$WORKERS")

# metrics done DIR NUM: the fewest epochs any of the NUM networks of session DIR has finished (0: none).
# metrics table ROOT TEACHER_DIR "NAME NUM"...: the table of best test accuracies of the rows under ROOT.
# Plain json, no torch import (fast); a metrics line cut by a kill is skipped.
metrics() {
    "$PYTHON" - "$@" <<'EOF'
import json, os, sys

def records(path):
    found = []
    if os.path.exists(path):
        for line in open(path):
            try:
                found.append(json.loads(line))
            except ValueError:
                pass
    return found

def best(path):
    return max((r["test_acc"] for r in records(path) if "test_acc" in r), default=None)

mode, args = sys.argv[1], sys.argv[2:]
if mode == "done":
    root, num = args[0], int(args[1])
    print(min(max((r.get("epoch", 0) for r in records(os.path.join(root, f"metrics_{i}.jsonl"))), default=0)
              for i in range(1, num + 1)))
else:
    root, teacher_root, rows = args[0], args[1], [r.split() for r in args[2:]]
    teacher = best(os.path.join(teacher_root, "metrics_1.jsonl"))
    print(f"teacher: {'-' if teacher is None else f'{teacher:.2f}'}")
    width = max(int(num) for _, num in rows)
    print("| method | " + " | ".join(f"net {i}" for i in range(1, width + 1)) + " | mean |")
    print("|---" * (width + 2) + "|")
    for name, num in rows:
        accs = [best(os.path.join(root, name, f"metrics_{i}.jsonl")) for i in range(1, int(num) + 1)]
        cells = ["-" if a is None else f"{a:.2f}" for a in accs] + [""] * (width - len(accs))
        mean = "-" if None in accs else f"{sum(accs) / len(accs):.2f}"
        print(f"| {name} | " + " | ".join(cells) + f" | {mean} |")
EOF
}

# run SCRIPT NUM DIR EPOCHS FLAGS...: launch_ring, skipped when done, resumed when cut short.
run() {
    local script=$1 num=$2 dir=$3 epochs=$4 done
    shift 4
    done=$(metrics done "$dir" "$num") || return 1
    if [ "$done" -ge "$epochs" ]; then
        echo "$dir: already trained for $done epochs, kept"
        return 0
    fi
    local resume=()
    [ "$done" -gt 0 ] && resume=(--resume) && echo "$dir: resuming after epoch $done"
    launch_ring "$script" "$num" "$dir" --epochs "$epochs" "${resume[@]}" "$@"
}

echo "== teacher $TEACHER ($TEACHER_S)"
run "$REPO_ROOT/grafting_cifar/grafting.py" 1 "$TEACHER_S" "$TEACHER_EPOCHS" --model "$TEACHER" --cifar "$CIFAR" \
    "${COMMON[@]}" && [ -f "$TEACHER_CKPT" ] || { echo "no trained teacher $TEACHER_CKPT; see $TEACHER_S/1.log"; exit 1; }

STUDENT_FLAGS=(--arch "$STUDENT" --num_classes "$CIFAR" "${COMMON[@]}")
TEACHER_FLAGS=(--teacher_arch "$TEACHER" --teacher_dir "$TEACHER_CKPT" --T "$T")
SCRIPT=$REPO_ROOT/grafting_plus/grafting+.py
ROWS=("baseline 1" "grafting 2" "distillation 1" "grafting+ 2")
status=0
for row in "${ROWS[@]}"; do
    read -r name num <<< "$row"
    echo "== $name: $num student(s)"
    teacher=()
    case $name in distillation|grafting+) teacher=("${TEACHER_FLAGS[@]}") ;; esac
    run "$SCRIPT" "$num" "$S/$name" "$EPOCHS" "${STUDENT_FLAGS[@]}" "${teacher[@]}" "$@" || status=1
done

echo
echo "Grafting+ $TEACHER -> $STUDENT, ${DATASET} with $CIFAR classes, best test accuracy (%):"
metrics table "$S" "$TEACHER_S" "${ROWS[@]}"
exit $status
