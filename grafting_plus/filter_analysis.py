"""Valid and invalid filters across training methods (the grafting+ paper's "reason" analysis).

The filter sets are fixed once, from the BASELINE checkpoint: a conv filter is invalid when its L1 norm
in the baseline is below --threshold, valid otherwise. The filters are those the papers count, of the
convolutions of the main path, the 1×1 shortcut projections left out (--all-convs: every conv). For the
baseline and every other method's checkpoint (same architecture), the script prints the average L1 norm
of the filters in each set: grafting should raise the norm of the filters that are invalid in the
baseline, distillation alone should not.

    python grafting_plus/filter_analysis.py --threshold 0.1 --baseline runs/baseline/best_1.t7 \\
        --method distillation=runs/distill/best_1.t7 --method grafting=runs/graft/best_1.t7 \\
        --method grafting+=runs/gplus/best_1.t7
"""
import argparse
import math

from filtergraft import cli
from filtergraft.analysis import counted_checkpoint, mean_l1_by_mask, valid_masks
from filtergraft.checkpoint import check_compatible, load_checkpoint, state_dict_of
from filtergraft.errors import UserError, exit_on_user_error


def method_spec(text):
    """NAME=PATH -> (NAME, PATH)."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, not '{text}'")
    return name, path


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Average L1 norm of the baseline's valid and invalid filters "
                                                 "in checkpoints of several training methods")
    parser.add_argument("--baseline", required=True, metavar="PATH", help="baseline checkpoint (fixes the sets)")
    parser.add_argument("--method", type=method_spec, action="append", default=[], metavar="NAME=PATH",
                        help="a method's checkpoint of the same architecture (repeat the flag)")
    parser.add_argument("--threshold", type=cli.finite, default=0.1,
                        help="a filter is invalid when its L1 norm in the baseline is below this")
    parser.add_argument("--all-convs", action="store_true",
                        help="every conv's filters, the 1×1 shortcut projections included (the papers leave them out)")
    parser.add_argument("--model", dest="arch", default=None,
                        help="architecture of a bare state dict baseline (this project's checkpoints record theirs)")
    return parser.parse_args(argv)


def load(path):
    """(checkpoint, its state dict, its recorded test accuracy or None)."""
    checkpoint = load_checkpoint(path)
    acc = checkpoint.get("acc") if isinstance(checkpoint, dict) else None
    return checkpoint, state_dict_of(checkpoint, path), acc


def analyse(baseline, methods, threshold, all_convs=False):
    """Rows (name, acc, valid count, invalid count, mean L1 of valid, mean L1 of invalid) for the baseline
    (state dict, acc, model) and each (name, state dict, acc) method, with the valid/invalid sets taken from
    the baseline's counted convs."""
    base_state, base_acc, model = baseline
    masks = valid_masks(base_state, threshold, model, all_convs)
    if not masks:
        raise UserError("the baseline checkpoint has no conv layers to analyse")
    valid = sum(int(m.sum()) for m in masks.values())
    invalid = sum(int((~m).sum()) for m in masks.values())
    rows = []
    for name, state, acc in [("baseline", base_state, base_acc), *methods]:
        rows.append((name, acc, valid, invalid, *mean_l1_by_mask(state, masks)))
    return rows


def fmt(value, spec):
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def main(argv=None):
    args = parse_args(argv)
    checkpoint, base_state, base_acc = load(args.baseline)
    _, model = counted_checkpoint(checkpoint, args.baseline, args.all_convs, args.arch)
    methods = []
    for name, path in args.method:
        _, state, acc = load(path)
        check_compatible(state, base_state, f"--method {name}={path} (compared with the baseline)")
        methods.append((name, state, acc))
    rows = analyse((base_state, base_acc, model), methods, args.threshold, args.all_convs)
    _, _, valid, invalid = rows[0][:4]
    print(f"filter sets from the baseline {args.baseline} at L1 threshold {args.threshold:g}: "
          f"{valid} valid, {invalid} invalid of {valid + invalid} filters")
    print("| method | test acc (%) | mean L1, valid filters | mean L1, invalid filters |")
    print("|---|---|---|---|")
    for name, acc, _, _, valid_l1, invalid_l1 in rows:
        print(f"| {name} | {fmt(acc, '.2f')} | {fmt(valid_l1, '.4f')} | {fmt(invalid_l1, '.4f')} |")


if __name__ == "__main__":
    with exit_on_user_error("filter_analysis.py"):
        main()
