# Shared by the launch scripts (source it): one process per network, pinned to one GPU each.
#
#   launch_ring SCRIPT NUM SESSION_DIR [FLAGS...]
#
# starts `python SCRIPT --num NUM --i i --s SESSION_DIR FLAGS...` for i = 1..NUM. GPUs come from $GPUS
# (comma-separated ids, round-robin when there are fewer GPUs than networks); when GPUS is unset, every
# GPU nvidia-smi lists; when there is none, the CPU, with the cores shared out between the processes.
# Each network's console goes to SESSION_DIR/<i>.out (its log is SESSION_DIR/<i>.log). Waits for all,
# reports every exit status, and returns non-zero when any network failed.

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

launch_ring() {
    local script=$1 num=$2 dir=$3
    shift 3
    mkdir -p "$dir" || return 1
    local threads=$(( $(nproc) / num ))
    [ "$threads" -ge 1 ] || threads=1
    local pids=() i gpu
    for i in $(seq 1 "$num"); do
        gpu=$(gpu_for "$i")
        if [ -n "$gpu" ]; then
            echo "network $i on GPU $gpu: $dir/$i.log"
            CUDA_VISIBLE_DEVICES=$gpu "$PYTHON" "$script" --num "$num" --i "$i" --s "$dir" "$@" >"$dir/$i.out" 2>&1 &
        else
            echo "network $i on CPU ($threads threads): $dir/$i.log"
            CUDA_VISIBLE_DEVICES= OMP_NUM_THREADS=${OMP_NUM_THREADS:-$threads} \
                "$PYTHON" "$script" --num "$num" --i "$i" --s "$dir" "$@" >"$dir/$i.out" 2>&1 &
        fi
        pids+=($!)
    done
    local status=0 rc
    for i in $(seq 1 "$num"); do
        wait "${pids[$((i - 1))]}"
        rc=$?
        if [ "$rc" -eq 0 ]; then
            echo "network $i: exit 0"
        else
            echo "network $i: exit $rc ($(tail -n 1 "$dir/$i.out"))"
            status=1
        fi
    done
    return $status
}
