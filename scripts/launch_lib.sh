# Shared by the launch scripts (source it): one process per network, pinned to one GPU each.
#
#   launch_ring SCRIPT NUM SESSION_DIR [FLAGS...]
#
# starts `python SCRIPT --num NUM --i i --s SESSION_DIR FLAGS...` for i = 1..NUM. GPUs come from $GPUS
# (comma-separated ids, round-robin when there are fewer GPUs than networks); when GPUS is unset, every
# GPU nvidia-smi lists; when there is none, the CPU, with the cores shared out between the processes.
# Each network's console goes to SESSION_DIR/<i>.out (its log is SESSION_DIR/<i>.log). Waits for all,
# reports every exit status, and returns non-zero when any network failed. The launcher owns its networks:
# the first that fails stops the others, and so does a Ctrl-C, SIGINT or SIGTERM of the launcher (supervise).
#
# EXCHANGE=dist starts one torchrun instead: NUM networks on this machine, NNODES machines (default 1),
# this one NODE_RANK; MASTER_ADDR and MASTER_PORT name node 0 (on one machine without MASTER_PORT,
# torchrun --standalone picks a free port). The networks swap weights over torch.distributed
# (--exchange dist), network i being torchrun rank i - 1; same GPUs, same <i>.out and <i>.log, same exit
# report (for this machine's networks), and torchrun's own output in SESSION_DIR/torchrun_node<NODE_RANK>.out.
# A single network has nothing to exchange and starts as with EXCHANGE=file.
#
# RANKS_PER_NETWORK=M (default 1) trains every network on M torchrun ranks (DistributedDataParallel, the
# network's batch -b split over them), with either EXCHANGE: NPROC_PER_NODE processes on this machine
# (default NUM x M: NUM networks here), NNODES x NPROC_PER_NODE ranks in all, network i on ranks
# (i - 1) x M .. i x M - 1, so a network stays on one machine when M divides NPROC_PER_NODE. Rank 0 of a
# network (its leader) writes its <i>.out; rank k > 0 writes <i>.rank<k>.out.
#
# PACK=1 (launch_session, launch_packs below) starts one process per GPU instead, each training a
# contiguous pack of the networks (--pack --members FIRST-LAST).

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$REPO_ROOT/.venv/bin/python" ]; then PYTHON="$REPO_ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi

list_gpus() {
    if [ -n "${GPUS+set}" ]; then
        echo "$GPUS"
    elif command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null | paste -sd, -
    fi
}

# gpu_for I: the GPU of network I (round-robin over list_gpus), empty when there is none.
gpu_for() {
    local gpus
    IFS=, read -r -a gpus <<< "$(list_gpus)"
    [ "${#gpus[@]}" -gt 0 ] && echo "${gpus[$(( ($1 - 1) % ${#gpus[@]} ))]}"
    return 0
}

# ring_launcher NUM: how a ring of NUM networks on this machine starts, the one reading of $EXCHANGE and
# $RANKS_PER_NETWORK: "torchrun" for dist with more than one network over all NNODES machines or for more
# than one rank per network, else "processes" (file, or a single network, which has nothing to exchange);
# an unknown EXCHANGE or a RANKS_PER_NETWORK that is no count is an error.
ring_launcher() {
    check_count RANKS_PER_NETWORK "${RANKS_PER_NETWORK:-1}" ranks || return 2
    case "${EXCHANGE:-file}" in
        file|dist) ;;
        *) echo "error: EXCHANGE must be file or dist, not '$EXCHANGE'" >&2; return 2 ;;
    esac
    if [ "${RANKS_PER_NETWORK:-1}" -gt 1 ] || { [ "${EXCHANGE:-file}" = dist ] && [ $(($1 * ${NNODES:-1})) -gt 1 ]; }; then
        echo torchrun
    else
        echo processes
    fi
}

# session_file DIR I KIND...: the paths of network I's files of each KIND (log, console, metrics, best,
# last) in session DIR, one a line, as filtergraft.session names them.
session_file() {
    "$PYTHON" -m filtergraft.results.launcher file "$@"
}

# check_count NAME VALUE [WHAT]: VALUE is a whole number of 1 or more (of WHAT: networks), else one line
# saying so (status 2).
check_count() {
    if ! [[ "$2" =~ ^[1-9][0-9]*$ ]]; then
        echo "error: $1 must be a whole number of ${3:-networks}, 1 or more, not '$2'" >&2
        return 2
    fi
}

launch_ring() {
    local script=$1 num=$2 dir=$3 launcher
    shift 3
    check_count NUM "$num" || return 2
    launcher=$(ring_launcher "$num") || return 2
    mkdir -p "$dir" || return 1
    if [ "$launcher" = torchrun ]; then
        launch_torchrun "$script" "$num" "$dir" "$@"
        return
    fi
    local threads=$(( $(nproc) / num ))
    [ "$threads" -ge 1 ] || threads=1
    local pids=() outs=() i gpu out log
    for i in $(seq 1 "$num"); do
        { read -r out && read -r log; } < <(session_file "$dir" "$i" console log) || { stop_networks KILL "${pids[@]}"; return 1; }
        gpu=$(gpu_for "$i")
        if [ -n "$gpu" ]; then
            echo "network $i on GPU $gpu: $log"
            CUDA_VISIBLE_DEVICES=$gpu "$PYTHON" "$script" --num "$num" --i "$i" --s "$dir" "$@" >"$out" 2>&1 &
        else
            echo "network $i on CPU ($threads threads): $log"
            CUDA_VISIBLE_DEVICES= OMP_NUM_THREADS=${OMP_NUM_THREADS:-$threads} \
                "$PYTHON" "$script" --num "$num" --i "$i" --s "$dir" "$@" >"$out" 2>&1 &
        fi
        pids+=($!)
        outs+=("$out")
    done
    local names=($(seq 1 "$num"))
    supervise pids outs names
}

# STOP_GRACE: seconds a network has to stop after SIGTERM before it is killed (SIGKILL).
STOP_GRACE=${STOP_GRACE:-30}

# stop_networks SIGNAL PID...: send SIGNAL to those of the PIDs still running.
stop_networks() {
    local signal=$1
    shift
    [ $# -gt 0 ] && kill -s "$signal" "$@" 2>/dev/null
    return 0
}

# supervise PIDS OUTS NAMES: wait for the processes whose pids, consoles and names (network 2, networks
# 1..4 of a pack) are in the arrays named PIDS, OUTS and NAMES, as torchrun does: the first to fail stops
# the others at once (SIGTERM, then SIGKILL after STOP_GRACE seconds), and so does a SIGINT or SIGTERM of the
# launcher (Ctrl-C); a second one kills them. Then every exit status; non-zero when any failed or the
# launcher was stopped.
supervise() {
    local -n _pids=$1 _outs=$2 _names=$3
    local -A code=()
    local running=("${_pids[@]}") stopped="" killer="" pid rc k status=0
    stop_all() {  # stop_all WHY
        if [ -n "$stopped" ]; then
            stop_networks KILL "${running[@]}"
            return
        fi
        stopped=$1
        stop_networks TERM "${running[@]}"
        # short sleeps, so that the watchdog ends at once when it is no longer needed
        ( for ((t = 0; t < STOP_GRACE * 10; t++)); do sleep 0.1; done; kill -s KILL "${running[@]}" 2>/dev/null ) &
        killer=$!
    }
    trap 'echo "launcher: interrupted, stopping every network"; stop_all interrupted' INT
    trap 'echo "launcher: terminated, stopping every network"; stop_all terminated' TERM
    while [ ${#running[@]} -gt 0 ]; do
        pid=""
        wait -n -p pid "${running[@]}"
        rc=$?
        [ -n "${pid:-}" ] || continue  # a signal broke off the wait: its trap has run
        code[$pid]=$rc
        running=($(for k in "${running[@]}"; do [ "$k" != "$pid" ] && echo "$k"; done))
        if [ "$rc" -ne 0 ] && [ -z "$stopped" ]; then
            for k in "${!_pids[@]}"; do [ "${_pids[$k]}" = "$pid" ] && echo "network ${_names[$k]} failed (exit $rc): stopping the others"; done
            stop_all failed
        fi
    done
    trap - INT TERM
    [ -n "$killer" ] && kill "$killer" 2>/dev/null
    for k in "${!_pids[@]}"; do
        rc=${code[${_pids[$k]}]}
        report_exit "${_names[$k]}" "$rc" "${_outs[$k]}"
        [ "$rc" -eq 0 ] || status=1
    done
    case $stopped in
        interrupted) return 130 ;;
        terminated) return 143 ;;
    esac
    return $status
}

# report_exit I RC CONSOLE: one network's exit status, with the last line of its console when it failed.
report_exit() {
    if [ "$2" -eq 0 ]; then
        echo "network $1: exit 0"
    else
        echo "network $1: exit $2 ($(tail -n 1 "$3" 2>/dev/null))"
    fi
}

# dist_worker STATUS_DIR SESSION_DIR THREADS PYTHON M FLAGS...: one torchrun worker, rank RANK % M of network
# RANK / M + 1 on the GPU gpu_for gives its local rank (or the CPU), console to rank_console's file. It
# outlives torchrun's SIGTERM until the network has said why it stops, and leaves the exit status in
# STATUS_DIR/<RANK>.
dist_worker() {
    local status_dir=$1 dir=$2 threads=$3 python=$4 m=$5
    shift 5
    local gpu child rc out
    out=$("$python" -m filtergraft.results.launcher rank-console "$dir" $((RANK / m + 1)) $((RANK % m))) || return 1
    gpu=$(gpu_for "$((LOCAL_RANK + 1))")
    if [ -n "$gpu" ]; then
        export CUDA_VISIBLE_DEVICES=$gpu
    else
        export CUDA_VISIBLE_DEVICES= OMP_NUM_THREADS=$threads
    fi
    trap ':' TERM INT
    # A background job would ignore SIGINT, and torchrun passes a Ctrl-C on as SIGINT.
    ( trap - INT; exec "$python" "$@" >"$out" 2>&1 ) &
    child=$!
    while kill -0 "$child" 2>/dev/null; do wait "$child"; done
    wait "$child"
    rc=$?
    echo "$rc" >"$status_dir/$RANK"
    return "$rc"
}

launch_torchrun() {
    local script=$1 num=$2 dir=$3
    shift 3
    local nnodes=${NNODES:-1} node=${NODE_RANK:-0} m=${RANKS_PER_NETWORK:-1} exchange=${EXCHANGE:-file}
    local nproc=${NPROC_PER_NODE:-$((num * m))}
    check_count NPROC_PER_NODE "$nproc" processes || return 2
    local world=$((nnodes * nproc))
    if [ $((world % m)) -ne 0 ]; then
        echo "error: $nnodes x $nproc ranks (NNODES x NPROC_PER_NODE) do not split into networks of" \
             "RANKS_PER_NETWORK=$m ranks; make NNODES x NPROC_PER_NODE a multiple of $m" >&2
        return 2
    fi
    [ "$m" -gt 1 ] || exchange=dist  # one rank per network: torchrun is there for the dist exchange
    local threads=$(( $(nproc) / nproc ))
    [ "$threads" -ge 1 ] || threads=1
    local run=(--nproc_per_node="$nproc")
    if [ "$nnodes" -eq 1 ] && [ -z "${MASTER_PORT:-}" ]; then
        run+=(--standalone)  # a free port of its own: sessions side by side do not collide
    else
        run+=(--nnodes="$nnodes" --node_rank="$node")
        [ -n "${MASTER_ADDR:-}" ] && run+=(--master_addr="$MASTER_ADDR")
        [ -n "${MASTER_PORT:-}" ] && run+=(--master_port="$MASTER_PORT")
    fi
    local status_dir first=$((node * nproc)) last=$(((node + 1) * nproc - 1))
    status_dir=$(mktemp -d) || return 1
    echo "torchrun: ranks $first..$last of $world on this machine, networks $((first / m + 1))..$((last / m + 1))" \
         "of $((world / m)) ($m rank(s) each): logs in $dir/<i>.log, torchrun's in $dir/torchrun_node$node.out"
    # `--` keeps torchrun from taking the script's --num for its own --numa-binding.
    "$PYTHON" -m torch.distributed.run "${run[@]}" --no-python -- \
        bash -c 'source "$0" && dist_worker "$@"' "$REPO_ROOT/scripts/launch_lib.sh" \
        "$status_dir" "$dir" "${OMP_NUM_THREADS:-$threads}" "$PYTHON" "$m" "$script" \
        --num "$((world / m))" --ranks-per-network "$m" --s "$dir" --exchange "$exchange" "$@" \
        >"$dir/torchrun_node$node.out" 2>&1 &
    local torchrun=$! status r name
    # torchrun stops its workers on SIGTERM as on a failure of one of them
    trap 'kill -s TERM "$torchrun" 2>/dev/null' INT TERM
    while :; do
        wait "$torchrun"
        status=$?
        kill -0 "$torchrun" 2>/dev/null || break  # still running: a signal broke off the wait
    done
    trap - INT TERM
    for r in $(seq "$first" "$last"); do
        name=$((r / m + 1))
        [ $((r % m)) -eq 0 ] || name="$name rank $((r % m))"
        if [ -f "$status_dir/$r" ]; then
            report_exit "$name" "$(cat "$status_dir/$r")" \
                "$("$PYTHON" -m filtergraft.results.launcher rank-console "$dir" $((r / m + 1)) $((r % m)))"
        else
            echo "network $name: did not run to an exit status (see $dir/torchrun_node$node.out)"
        fi
    done
    [ "$status" -eq 0 ] || echo "torchrun: exit $status (see $dir/torchrun_node$node.out)"
    rm -rf "$status_dir"
    return $status
}

# train_session SCRIPT NUM SESSION_DIR EPOCHS [FLAGS...]: launch_session with --epochs EPOCHS, unless every
# network has trained them already (kept); with --resume when a network finished an epoch before.
train_session() {
    local script=$1 num=$2 dir=$3 epochs=$4 state
    shift 4
    state=$("$PYTHON" -m filtergraft.results.launcher state "$dir" "$num" "$epochs") || return 1
    case $state in
        done) echo "$dir: already trained for $epochs epochs, kept"; return 0 ;;
        resume) echo "$dir: cut short, resuming"; set -- --resume "$@" ;;
    esac
    launch_session "$script" "$num" "$dir" --epochs "$epochs" "$@"
}

# launch_session SCRIPT NUM SESSION_DIR [FLAGS...]: launch_packs when PACK=1, else launch_ring.
launch_session() {
    if [ "${PACK:-0}" = 1 ]; then launch_packs "$@"; else launch_ring "$@"; fi
}

# launch_packs SCRIPT NUM SESSION_DIR [FLAGS...] (PACK=1): the NUM networks in one process per device,
# `python SCRIPT --num NUM --pack --members FIRST-LAST --s SESSION_DIR FLAGS...`: the GPUs of list_gpus
# split the ring into that many contiguous packs (sizes differing by at most one; one pack, on the CPU
# with all its cores, when there is no GPU), whose boundary networks exchange through the session's files.
# MALLOC_ARENA_MAX=1: the members' threads share glibc's main heap (pack.one_malloc_arena says why).
# Each pack's console goes to SESSION_DIR/pack_<FIRST>-<LAST>.out (every network's log is still
# SESSION_DIR/<i>.log). Waits for all, reports every exit status, returns non-zero when any pack failed.
launch_packs() {
    local script=$1 num=$2 dir=$3
    shift 3
    if [ "${EXCHANGE:-file}" != file ]; then
        echo "error: PACK=1 starts its packs with EXCHANGE=file; for torch.distributed start them with" \
             "torchrun --nproc_per_node=PACKS -- $script --pack --exchange dist --num $num ..." >&2
        return 2
    fi
    mkdir -p "$dir" || return 1
    local gpus=() packs p size larger first last gpu out pids=() outs=() names=()
    check_count NUM "$num" || return 2
    IFS=, read -r -a gpus <<< "$(list_gpus)"
    packs=${#gpus[@]}
    [ "$packs" -ge 1 ] || packs=1
    [ "$packs" -le "$num" ] || packs=$num
    size=$((num / packs)) larger=$((num % packs))
    for p in $(seq 0 $((packs - 1))); do
        first=$((p * size + (p < larger ? p : larger) + 1))
        last=$((first + size - 1 + (p < larger ? 1 : 0)))
        out=$("$PYTHON" -m filtergraft.results.launcher pack-console "$dir" "$first" "$last") || return 1
        gpu=${gpus[$p]:-}
        if [ -n "$gpu" ]; then
            echo "networks $first..$last on GPU $gpu: logs in $dir/<i>.log, console $out"
            CUDA_VISIBLE_DEVICES=$gpu MALLOC_ARENA_MAX=1 "$PYTHON" "$script" --num "$num" --pack \
                --members "$first-$last" --s "$dir" "$@" >"$out" 2>&1 &
        else
            echo "networks $first..$last on CPU ($(nproc) threads): logs in $dir/<i>.log, console $out"
            CUDA_VISIBLE_DEVICES= MALLOC_ARENA_MAX=1 "$PYTHON" "$script" --num "$num" --pack \
                --members "$first-$last" --s "$dir" "$@" >"$out" 2>&1 &
        fi
        pids+=($!)
        outs+=("$out")
        names+=("$first..$last")
    done
    supervise pids outs names
}
