"""The demo's table: every network's best and final accuracy beside the baseline, and its invalid filters.

    python scripts/demo_table.py BASELINE_DIR GRAFTING_DIR [--threshold 10 15]
"""
import argparse
import json
from pathlib import Path

from filtergraft.analysis import count_invalid_filters
from filtergraft.checkpoint import load_checkpoint, state_dict_of
from filtergraft.errors import exit_on_user_error
from filtergraft.session import read_jsonl


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sessions", nargs="+", type=Path)
    parser.add_argument("--threshold", type=float, nargs=2, default=[10.0, 15.0],
                        help="two L1-norm thresholds for invalid filters (digits-trained ResNet20 filters "
                             "have L1 norms of about 5 to 40; the paper's CIFAR threshold is 0.1)")
    return parser.parse_args(argv)


def network_rows(session, thresholds):
    """(session, network, best, final, invalid counts...) for every network of a session directory."""
    num = json.loads((session / "session.json").read_text())["num"]
    rows = []
    for i in range(1, num + 1):
        metrics = read_jsonl(session / f"metrics_{i}.jsonl")
        state = state_dict_of(load_checkpoint(session / f"best_{i}.t7"))
        counts = [count_invalid_filters(state, t) for t in thresholds]
        rows.append((session.name, i, metrics[-1]["best_acc"], metrics[-1]["test_acc"], counts))
    return rows


def main(argv=None):
    args = parse_args(argv)
    t1, t2 = args.threshold
    print(f"\n| session | network | best acc | final acc | invalid (L1<{t1:g}) | invalid (L1<{t2:g}) |")
    print("|---|---|---|---|---|---|")
    for session in args.sessions:
        for name, i, best, final, counts in network_rows(session, args.threshold):
            cells = " | ".join(f"{inv}/{tot}" for inv, tot in counts)
            print(f"| {name} | {i} | {best:.2f}% | {final:.2f}% | {cells} |")


if __name__ == "__main__":
    with exit_on_user_error("demo_table.py"):
        main()
