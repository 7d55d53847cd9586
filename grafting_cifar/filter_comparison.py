"""Count invalid filters (L1 norm below a threshold) of checkpoints as the paper does (SPEC §3): over the
convolutions of the main path, the 1×1 shortcut projections left out (--all-convs counts every conv).

    python grafting_cifar/filter_comparison.py runs/base/best_1.t7 runs/graft/best_1.t7 --threshold 0.1 1
"""
import argparse

from filtergraft import cli
from filtergraft.analysis import count_invalid_filters, counted_checkpoint
from filtergraft.checkpoint import load_checkpoint
from filtergraft.errors import UserError, exit_on_user_error


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Invalid filters of checkpoints at given L1 thresholds")
    parser.add_argument("checkpoints", nargs="+", help="best_<i>.t7 / last_<i>.t7 / bare state dicts")
    parser.add_argument("--threshold", type=cli.finite, nargs="+", default=[0.1], help="L1-norm thresholds")
    parser.add_argument("--all-convs", action="store_true",
                        help="count every conv, the 1×1 shortcut projections included (the paper leaves them out)")
    parser.add_argument("--model", dest="arch", default=None,
                        help="architecture of bare state dicts (this project's checkpoints record theirs)")
    return parser.parse_args(argv)


def invalid_filter_table(paths, thresholds, all_convs=False, arch=None):
    """Rows (path, threshold, invalid, total) for every checkpoint and threshold."""
    rows = []
    for path in paths:
        state, model = counted_checkpoint(load_checkpoint(path), path, all_convs, arch)
        for threshold in thresholds:
            rows.append((path, threshold, *count_invalid_filters(state, threshold, model, all_convs)))
    return rows


def main(argv=None):
    args = parse_args(argv)
    if any(t < 0 for t in args.threshold):
        raise UserError("--threshold values must be non-negative")
    rows = invalid_filter_table(args.checkpoints, args.threshold, args.all_convs, args.arch)
    print("| checkpoint | threshold | invalid/total | ratio |")
    print("|---|---|---|---|")
    for path, threshold, invalid, total in rows:
        print(f"| {path} | {threshold:g} | {invalid}/{total} | {invalid / total:.2%} |")


if __name__ == "__main__":
    with exit_on_user_error("filter_comparison.py"):
        main()
