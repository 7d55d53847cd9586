# Shared by the reproduce scripts (source it after setting RUNS): one paper configuration at a time, then
# the summary of everything under $RUNS.
#
#   config NAME [VAR=value ...] COMMAND [ARGS...]
#
# runs COMMAND with S=$RUNS/NAME and the given variables in its environment. A configuration that finished
# before (marker $RUNS/NAME/.reproduced) is kept; one that failed is listed at the end and the others go on
# (one cut short: continue it with the printed command plus --resume, then run the script again).
# DRY_RUN=1 prints the commands instead of running them.
source "$(dirname "${BASH_SOURCE[0]}")/../launch_lib.sh"
FAILED=()

config() {
    local name=$1
    shift
    local dir=$RUNS/$name
    if [ -n "${DRY_RUN:-}" ]; then
        echo "S=$dir $*"
        return 0
    fi
    if [ -f "$dir/.reproduced" ]; then
        echo "== $name: finished before, kept ($dir)"
        return 0
    fi
    echo "== $name: S=$dir $*"
    if env S="$dir" "$@"; then
        touch "$dir/.reproduced"
    else
        echo "== $name failed: see the logs in $dir" >&2
        FAILED+=("$name")
    fi
}

# finish [summarize.py flags...]: the table of every session under $RUNS (also $RUNS/results.csv, and
# plots with each baseline beside the runs of its model and data); non-zero when a configuration failed.
finish() {
    [ -n "${DRY_RUN:-}" ] && return 0
    local dir baselines=()
    for dir in "$RUNS"/*baseline* "$RUNS"/*/baseline; do
        [ -d "$dir" ] && baselines+=(--baseline "$dir")
    done
    "$PYTHON" "$REPO_ROOT/scripts/summarize.py" "$RUNS" "${baselines[@]}" --csv "$RUNS/results.csv" "$@"
    if [ ${#FAILED[@]} -gt 0 ]; then
        echo "failed configurations: ${FAILED[*]}" >&2
        return 1
    fi
}
