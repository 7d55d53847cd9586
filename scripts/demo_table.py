"""The demo's table: every network's best and final accuracy beside the baseline, and its invalid filters.

    python scripts/demo_table.py BASELINE_DIR GRAFTING_DIR [--threshold 10 15]
"""
import argparse
from pathlib import Path

from filtergraft.analysis import count_invalid_filters, counted_checkpoint
from filtergraft.checkpoint import load_checkpoint
from filtergraft.errors import UserError, exit_on_user_error
from filtergraft.session import NotASession, read_session


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sessions", nargs="+", type=Path)
    parser.add_argument("--threshold", type=float, nargs=2, default=[10.0, 15.0],
                        help="two L1-norm thresholds for invalid filters (digits-trained ResNet20 filters "
                             "have L1 norms of about 5 to 40; the paper's CIFAR threshold is 0.1)")
    return parser.parse_args(argv)


def network_rows(path, thresholds):
    """(session, network, best, final, invalid counts...) for every network of a session directory."""
    try:
        session = read_session(path)
    except NotASession as err:
        raise UserError(f"{path}: {err}") from None
    rows = []
    for network in session.networks:
        if network.best_path is None:
            raise UserError(f"{path}: network {network.index} has no finished epoch or no best checkpoint")
        state, model = counted_checkpoint(load_checkpoint(network.best_path), network.best_path)
        counts = [count_invalid_filters(state, t, model) for t in thresholds]
        rows.append((path.name, network.index, network.best, network.final, counts))
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
