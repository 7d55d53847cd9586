#!/usr/bin/env bash
# The study: each paper's claim measured in miniature on scikit-learn's digits (offline, CPU), over SEEDS
# seeds, networks paired by seed across methods (network i of every session starts from seed + i), then
# one Markdown report with its plots (python -m filtergraft.results.study report STUDY).
#   scripts/study/run.sh                       # every stage (make study)
#   scripts/study/run.sh stripe shape          # some stages; the report covers whatever STUDY holds
# Stages: grafting (baseline, baseline with cosine, slr, dlr and N = 3 dlr), invalid (the invalid filters of
# the grafting stage's networks: trains that stage), plus (a teacher, then the grafting+ table's four rows),
# stripe (--sr values for each of STRIPE_ARCHS, and their baseline), shape (--freeze-weights against the
# control that freezes the skeleton as well).
# Environment: STUDY (runs/study), SEEDS (5: seeds 1..SEEDS), LANES (nproc: networks trained at once, one
# process each), THREADS (1: OMP threads per network).
#   grafting and grafting+: EPOCHS (5), MODEL (resnet20: the grafting networks and the students), BATCH (32,
#   so that the 1,437 training images make 45 steps an epoch; at the release's 128, six epochs gave 23-93 %
#   top-1 by seed), LR (0.025: the release's 0.1 at batch 128 scaled with the batch; at 0.1 the step-schedule
#   baselines spread over 84 ± 17 % and distillation's larger gradient stalled the students at 31 %; the
#   two-student grafting+ rows at LR and LR/2, as the release's 0.1 and 0.05), TEACHER (resnet20) and TEACHER_EPOCHS (3 × EPOCHS: at lr 0.1 a ResNet32 or ResNet56
#   stays under 25 % for 15 epochs on digits, so the teacher is the students' architecture trained three
#   times as long); GRAFTING_RUNS ("baseline baseline_cos slr dlr n3") and PLUS_ROWS ("baseline grafting
#   distillation grafting+") select sessions.
#   stripe and shape: STRIPE_ARCHS ("VGG ResNet56"), SRS ("0.01 0.02 0.03"), THRESHOLD (0.05), SHAPE_ARCH
#   (ResNet56), STRIPE_EPOCHS (8), STRIPE_BATCH (32) and STRIPE_LR (0.02). At the release's 0.1 a VGG16
#   skeleton run on digits stayed under 30 % for 8 epochs (0.05: 43 %; 0.02: 97 % after 5). The skeleton
#   values fall alike under the sign penalty, about 10·lr·sr a step with momentum 0.9; only the loss's
#   gradient (and, over the paper's 60k steps, weight decay) sets them apart. In 8 epochs at lr 0.02 a
#   skeleton of either network kept every stripe at --sr 0.025 (92-95 %) and collapsed to chance before
#   any stripe fell under the threshold at 0.035 and 0.05, so SRS spans that range.
# A rerun continues: finished sessions are kept, sessions cut short resume; STUDY records its settings and
# refuses other ones. Every job's console is in STUDY/logs/<job>.out. Exit non-zero when a job failed.
set -u
source "$(dirname "$0")/../launch_lib.sh"
export PYTHON
STUDY=${STUDY:-runs/study}
SEEDS=${SEEDS:-5}
EPOCHS=${EPOCHS:-5}
STRIPE_EPOCHS=${STRIPE_EPOCHS:-8}
MODEL=${MODEL:-resnet20}
TEACHER=${TEACHER:-resnet20}
TEACHER_EPOCHS=${TEACHER_EPOCHS:-$((3 * EPOCHS))}
STRIPE_ARCHS=${STRIPE_ARCHS:-VGG ResNet56}
SRS=${SRS:-0.01 0.02 0.03}
THRESHOLD=${THRESHOLD:-0.05}
BATCH=${BATCH:-32}
LR=${LR:-0.025}
STRIPE_BATCH=${STRIPE_BATCH:-32}
STRIPE_LR=${STRIPE_LR:-0.02}
SHAPE_ARCH=${SHAPE_ARCH:-ResNet56}
GRAFTING_RUNS=${GRAFTING_RUNS:-baseline baseline_cos slr dlr n3}
PLUS_ROWS=${PLUS_ROWS:-baseline grafting distillation grafting+}
LANES=${LANES:-$(nproc)}
export OMP_NUM_THREADS=${THREADS:-1}
STAGES=("$@")
[ ${#STAGES[@]} -gt 0 ] || STAGES=(grafting invalid plus stripe shape)
for stage in "${STAGES[@]}"; do
    case $stage in grafting|invalid|plus|stripe|shape) ;;
        *) echo "error: no stage '$stage'; the stages are grafting invalid plus stripe shape" >&2; exit 2 ;;
    esac
done
for run in $GRAFTING_RUNS; do
    case $run in baseline|baseline_cos|slr|dlr|n3) ;;
        *) echo "error: GRAFTING_RUNS: no run '$run'; the runs are baseline baseline_cos slr dlr n3" >&2; exit 2 ;;
    esac
done
for row in $PLUS_ROWS; do
    case $row in baseline|grafting|distillation|grafting+) ;;
        *) echo "error: PLUS_ROWS: no row '$row'; the rows are baseline grafting distillation grafting+" >&2; exit 2 ;;
    esac
done
check_count SEEDS "$SEEDS" || exit 2
check_count EPOCHS "$EPOCHS" || exit 2
check_count TEACHER_EPOCHS "$TEACHER_EPOCHS" || exit 2
check_count STRIPE_EPOCHS "$STRIPE_EPOCHS" || exit 2
check_count LANES "$LANES" || exit 2
# The paper's step schedule, ×0.1 every 60 of 200 epochs, at the same fractions of EPOCHS (rounded).
step_of() {  # step_of EPOCHS: the interval of that schedule, at least 1
    local step=$(( ($1 * 60 + 100) / 200 ))
    echo $(( step > 1 ? step : 1 ))
}
LR_STEP=$(step_of "$EPOCHS")
study() {
    "$PYTHON" -m filtergraft.results.study "$@"
}
study settings "$STUDY" seeds="$SEEDS" epochs="$EPOCHS" stripe_epochs="$STRIPE_EPOCHS" model="$MODEL" \
    teacher="$TEACHER" teacher_epochs="$TEACHER_EPOCHS" stripe_archs="$STRIPE_ARCHS" srs="$SRS" threshold="$THRESHOLD" shape_arch="$SHAPE_ARCH" \
    batch="$BATCH" lr="$LR" stripe_batch="$STRIPE_BATCH" stripe_lr="$STRIPE_LR" lr_step="$LR_STEP" || exit 2
LOGS=$STUDY/logs
mkdir -p "$LOGS" || exit 1

# The jobs run side by side, each a session's launcher taking as many of the LANES as it runs networks.
declare -A JOB_OF=() COST_OF=() STATUS=()
FAILED=() USED=0 STOPPED=""

# reap: wait for one job to end and book its exit status.
reap() {
    local pid="" rc name
    wait -n -p pid "${!JOB_OF[@]}"
    rc=$?
    [ -n "${pid:-}" ] || return 0  # a signal broke off the wait (and may leave pid unset)
    name=${JOB_OF[$pid]}
    USED=$((USED - COST_OF[$pid]))
    unset "JOB_OF[$pid]" "COST_OF[$pid]"
    STATUS[$name]=$rc
    if [ "$rc" -eq 0 ]; then
        echo "== $name: done ($(date +%T))"
    else
        echo "== $name failed (exit $rc): see $LOGS/$name.out" >&2
        FAILED+=("$name")
    fi
}

# job NAME COST AFTER COMMAND...: queue COMMAND, to run in the background on COST lanes once job AFTER (if
# not empty) has ended well. run_queue starts the first queued job that fits in the free lanes, so that a
# job of one network fills the lane a two-network job cannot use yet.
QUEUE=()
job() {
    local name=$1 cost=$2 after=$3
    shift 3
    [ "$cost" -le "$LANES" ] || cost=$LANES
    QUEUE+=("$name"$'\x1f'"$cost"$'\x1f'"$after"$'\x1f'"$(printf '%q ' "$@")")
}

run_queue() {
    local i picked name cost after command
    while [ ${#QUEUE[@]} -gt 0 ] && [ -z "$STOPPED" ]; do
        picked=""
        for i in "${!QUEUE[@]}"; do
            IFS=$'\x1f' read -r name cost after command <<< "${QUEUE[$i]}"
            if [ -n "$after" ] && [ "${STATUS[$after]:-running}" != 0 ]; then
                [ -n "${STATUS[$after]+set}" ] || continue  # still to run
                echo "== $name: not run, $after failed" >&2
                FAILED+=("$name")
                unset "QUEUE[$i]"
                continue
            fi
            [ $((USED + cost)) -le "$LANES" ] && picked=$i && break
        done
        if [ -n "$picked" ]; then
            IFS=$'\x1f' read -r name cost after command <<< "${QUEUE[$picked]}"
            unset "QUEUE[$picked]"
            echo "== $name: started $(date +%T) (log $LOGS/$name.out)"
            # exec: the job's pid is the command's own, which a SIGTERM of the study reaches
            eval "exec $command" >"$LOGS/$name.out" 2>&1 &
            JOB_OF[$!]=$name
            COST_OF[$!]=$cost
            USED=$((USED + cost))
        elif [ ${#JOB_OF[@]} -gt 0 ]; then
            reap
        elif [ ${#QUEUE[@]} -gt 0 ]; then
            echo "study: queued jobs wait on a job that never ran: ${QUEUE[*]%%$'\x1f'*}" >&2
            FAILED+=(queue)
            return 1
        fi
    done
    while [ ${#JOB_OF[@]} -gt 0 ]; do reap; done
}

# trained NAME DIR NUM EPOCHS: whether session DIR (NUM networks) has trained EPOCHS epochs (a stripe run:
# and was pruned); then job NAME is booked as done. CUT_SHORT is set when it had begun.
trained() {
    local name=$1 dir=$2 state
    CUT_SHORT=""
    state=$("$PYTHON" -m filtergraft.results.launcher state "$dir" "$3" "$4") || return 1
    if [ "$state" = done ]; then
        echo "== $name: trained before, kept ($dir)"
        STATUS[$name]=0
        return 0
    fi
    [ "$state" = resume ] && CUT_SHORT=1
    return 1
}

# session NAME NUM SCRIPT DIR EPOCHS FLAGS...: a grafting session as a job (train_session resumes it).
session() {
    local name=$1 num=$2 script=$3 dir=$4 epochs=$5
    shift 5
    trained "$name" "$dir" "$num" "$epochs" && return 0
    job "$name" "$num" "" env NUM="$num" bash -c 'source "$0"; train_session "$@"' "$REPO_ROOT/scripts/launch_lib.sh" \
        "$script" "$num" "$dir" "$epochs" "$@"
}

# stripe NAME DIR FLAGS...: one stripe-pruning run (train, prune) as a job, resumed when cut short.
stripe() {
    local name=$1 dir=$2 resume=()
    shift 2
    trained "$name" "$dir" 1 "$STRIPE_EPOCHS" && return 0
    [ -n "$CUT_SHORT" ] && resume=(--resume)
    job "$name" 1 "" "$PYTHON" "$REPO_ROOT/stripe_pruning/main.py" --dataset digits --epochs "$STRIPE_EPOCHS" \
        -b "$STRIPE_BATCH" --lr "$STRIPE_LR" --workers 0 -p 1000 --save "$dir" "${resume[@]}" "$@"
}

stop_jobs() {  # a signal: the launchers stop their networks on SIGTERM
    STOPPED=$1
    echo "study: $1, stopping every job"
    [ ${#JOB_OF[@]} -gt 0 ] && kill -s TERM "${!JOB_OF[@]}" 2>/dev/null
}
trap 'stop_jobs interrupted' INT
trap 'stop_jobs terminated' TERM

wants() {
    local stage
    for stage in "${STAGES[@]}"; do
        for want in "$@"; do [ "$stage" = "$want" ] && return 0; done
    done
    return 1
}

start=$(date +%s)
GRAFT=(--dataset digits --model "$MODEL" -b "$BATCH" --lr "$LR" --workers 0 --print_frequence 1000)
CIFAR_SCRIPT=$REPO_ROOT/grafting_cifar/grafting.py
TEACHER_S=$STUDY/plus/teacher
if wants plus; then  # first: the grafting+ rows wait for it. On the baselines' step schedule.
    session teacher 1 "$CIFAR_SCRIPT" "$TEACHER_S" "$TEACHER_EPOCHS" --dataset digits --model "$TEACHER" \
        --lr-step "$(step_of "$TEACHER_EPOCHS")" -b "$BATCH" --lr "$LR" --seed 0 --workers 0 --print_frequence 1000
fi
if wants grafting invalid; then
    for seed in $(seq 1 "$SEEDS"); do
        dir=$STUDY/grafting/seed$seed
        for run in $GRAFTING_RUNS; do
            case $run in
                baseline) session "${run}_s$seed" 1 "$CIFAR_SCRIPT" "$dir/$run" "$EPOCHS" "${GRAFT[@]}" --seed "$seed" --lr-step "$LR_STEP" ;;
                baseline_cos) session "${run}_s$seed" 1 "$CIFAR_SCRIPT" "$dir/$run" "$EPOCHS" "${GRAFT[@]}" --seed "$seed" --cos ;;
                slr) session "${run}_s$seed" 2 "$CIFAR_SCRIPT" "$dir/$run" "$EPOCHS" "${GRAFT[@]}" --seed "$seed" --lr-step "$LR_STEP" ;;
                dlr) session "${run}_s$seed" 2 "$CIFAR_SCRIPT" "$dir/$run" "$EPOCHS" "${GRAFT[@]}" --seed "$seed" --difflr --cos ;;
                n3) session "${run}_s$seed" 3 "$CIFAR_SCRIPT" "$dir/$run" "$EPOCHS" "${GRAFT[@]}" --seed "$seed" --difflr --cos ;;
            esac
        done
    done
fi
if wants plus; then
    for seed in $(seq 1 "$SEEDS"); do
        for row in $PLUS_ROWS; do
            students=1
            case $row in grafting|grafting+) students=2 ;; esac
            trained "plus_${row}_s$seed" "$STUDY/plus/seed$seed/$row" "$students" "$EPOCHS" && continue
            job "plus_${row}_s$seed" "$students" teacher env ROW_NAMES="$row" TEACHER="$TEACHER" STUDENT="$MODEL" \
                CIFAR=10 DATASET=digits EPOCHS="$EPOCHS" TEACHER_EPOCHS="$TEACHER_EPOCHS" WORKERS=0 LR="$LR" \
                STUDENT_LRS="$LR $(awk -v lr="$LR" 'BEGIN { print lr / 2 }')" \
                S="$STUDY/plus/seed$seed" TEACHER_S="$TEACHER_S" bash "$REPO_ROOT/grafting_plus/grafting+.sh" \
                --seed "$seed" -b "$BATCH" --lr-step "$LR_STEP" --print_frequence 1000
        done
    done
fi
if wants stripe; then
    for arch in $STRIPE_ARCHS; do
        for seed in $(seq 1 "$SEEDS"); do
            dir=$STUDY/stripe/$arch/seed$seed
            stripe "${arch}_baseline_s$seed" "$dir/baseline" --arch "$arch" --seed "$seed"
            for sr in $SRS; do
                stripe "${arch}_sr${sr}_s$seed" "$dir/sr$sr" --arch "$arch" --seed "$seed" --sr "$sr" --threshold "$THRESHOLD"
            done
        done
    done
fi
if wants shape; then
    for seed in $(seq 1 "$SEEDS"); do
        dir=$STUDY/shape/$SHAPE_ARCH/seed$seed
        stripe "shape_s$seed" "$dir/skeleton" --arch "$SHAPE_ARCH" --seed "$seed" --freeze-weights
        stripe "shape_control_s$seed" "$dir/control" --arch "$SHAPE_ARCH" --seed "$seed" --freeze-weights --freeze-skeleton
    done
fi
run_queue
trap - INT TERM
end=$(date +%s)
study wall "$STUDY" "$start" "$end" "${STAGES[*]}" "${#FAILED[@]}"
echo "study: $(( end - start )) s for ${STAGES[*]}"
case $STOPPED in
    interrupted) exit 130 ;;
    terminated) exit 143 ;;
esac
study report "$STUDY" || exit 1
if [ ${#FAILED[@]} -gt 0 ]; then
    echo "failed jobs: ${FAILED[*]} (rerun the same command to continue them)" >&2
    exit 1
fi
