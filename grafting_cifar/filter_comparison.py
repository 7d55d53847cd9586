"""Count invalid filters (L1 norm below a threshold) over all conv layers of checkpoints (SPEC §3).

    python grafting_cifar/filter_comparison.py runs/base/best_1.t7 runs/graft/best_1.t7 --threshold 0.1 1
"""
import argparse

from filtergraft.analysis import count_invalid_filters
from filtergraft.checkpoint import load_checkpoint, state_dict_of
from filtergraft.errors import UserError, exit_on_user_error


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Invalid filters of checkpoints at given L1 thresholds")
    parser.add_argument("checkpoints", nargs="+", help="best_<i>.t7 / last_<i>.t7 / bare state dicts")
    parser.add_argument("--threshold", type=float, nargs="+", default=[0.1], help="L1-norm thresholds")
    return parser.parse_args(argv)


def invalid_filter_table(paths, thresholds):
    """Rows (path, threshold, invalid, total) for every checkpoint and threshold."""
    rows = []
    for path in paths:
        state = state_dict_of(load_checkpoint(path), path)
        for threshold in thresholds:
            rows.append((path, threshold, *count_invalid_filters(state, threshold)))
    return rows


def main(argv=None):
    args = parse_args(argv)
    if any(t < 0 for t in args.threshold):
        raise UserError("--threshold values must be non-negative")
    rows = invalid_filter_table(args.checkpoints, args.threshold)
    print("| checkpoint | threshold | invalid/total | ratio |")
    print("|---|---|---|---|")
    for path, threshold, invalid, total in rows:
        print(f"| {path} | {threshold:g} | {invalid}/{total} | {invalid / total:.2%} |")


if __name__ == "__main__":
    with exit_on_user_error("filter_comparison.py"):
        main()
