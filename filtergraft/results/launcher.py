"""What the launch scripts ask of their session directories, read through filtergraft.session (which needs
no torch, so that each call starts in well under a second):

    python -m filtergraft.results.launcher done DIR NUM
        the fewest epochs any of the NUM networks of session DIR has finished (0: none yet, or no DIR)
    python -m filtergraft.results.launcher state DIR NUM EPOCHS
        what a launcher does with session DIR of NUM networks trained for EPOCHS: "done" (every network
        trained them; a stripe-pruning run also pruned), "resume" (cut short: a network finished an epoch)
        or "new" (no epoch finished yet)
    python -m filtergraft.results.launcher table ROOT TEACHER_DIR "NAME NUM"...
        grafting+.sh's table: the best test accuracy of the teacher (network 1 of session TEACHER_DIR), then
        of every network of each row (session ROOT/NAME, NUM networks) and the row's mean
    python -m filtergraft.results.launcher file DIR I KIND...
        the path of network I's file of each KIND (log, metrics, best, last, or console: where a launcher
        sends its output) in session DIR, one a line
    python -m filtergraft.results.launcher pack-console DIR FIRST LAST
        where a launcher sends the console of the pack of networks FIRST..LAST (--pack) in session DIR
    python -m filtergraft.results.launcher rank-console DIR I K
        where a launcher sends the console of rank K of network I (several ranks per network; K = 0 is the
        network's own console) in session DIR

A metrics line cut short by a kill is skipped, as everywhere sessions are read.
"""
import sys
from dataclasses import fields
from pathlib import Path

from ..session import (PRUNE_REPORT, SINGLE_RUN_FILES, SessionFiles, console_file, network_files,
                       pack_console_file, read_network)

FILE_KINDS = (*(f.name for f in fields(SessionFiles)), "console")
USAGE = ('usage: launcher.py done DIR NUM | state DIR NUM EPOCHS | table ROOT TEACHER_DIR "NAME NUM"... | file DIR I KIND... | '
         'pack-console DIR FIRST LAST | rank-console DIR I K')


def _network(root, index):
    return read_network(root, network_files(index), index, [])  # what is missing shows as no epochs


def network_file(index, kind):
    """The name of network `index`'s file of `kind` (one of FILE_KINDS) in its session directory."""
    return console_file(index) if kind == "console" else getattr(network_files(index), kind)


def epochs_done(root, num):
    """The fewest epochs any of the `num` networks of session `root` has finished."""
    return min(_network(root, i).epochs for i in range(1, num + 1))


def session_state(root, num, epochs):
    """"done", "resume" or "new": session `root` of `num` networks to be trained for `epochs` (a single
    stripe-pruning run, told by its files, is done once pruned, and resumes from its last checkpoint)."""
    root = Path(root)
    if (root / SINGLE_RUN_FILES.metrics).is_file() or (root / PRUNE_REPORT).is_file():
        if (root / PRUNE_REPORT).is_file():
            return "done"
        return "resume" if (root / SINGLE_RUN_FILES.last).is_file() else "new"
    trained = [_network(root, i).epochs for i in range(1, num + 1)]
    # One network past an epoch is enough to resume: the others then start at epoch 1 (assembly).
    return "done" if min(trained) >= epochs else "resume" if max(trained) > 0 else "new"


def best_table(root, teacher_root, rows):
    """The lines of grafting+.sh's table; `rows` are (name, number of networks) of sessions under `root`."""
    teacher = _network(teacher_root, 1).best
    lines = [f"teacher: {'-' if teacher is None else f'{teacher:.2f}'}"]
    width = max(num for _, num in rows)
    lines.append("| method | " + " | ".join(f"net {i}" for i in range(1, width + 1)) + " | mean |")
    lines.append("|---" * (width + 2) + "|")
    for name, num in rows:
        accs = [_network(Path(root) / name, i).best for i in range(1, num + 1)]
        cells = ["-" if a is None else f"{a:.2f}" for a in accs] + [""] * (width - len(accs))
        mean = "-" if None in accs else f"{sum(accs) / len(accs):.2f}"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {mean} |")
    return lines


def main(argv):
    mode, args = (argv[0], argv[1:]) if argv else (None, [])
    if mode == "done" and len(args) == 2:
        print(epochs_done(args[0], int(args[1])))
    elif mode == "state" and len(args) == 3:
        print(session_state(args[0], int(args[1]), int(args[2])))
    elif mode == "file" and len(args) >= 3 and set(args[2:]) <= set(FILE_KINDS):
        print("\n".join(f"{args[0]}/{network_file(int(args[1]), kind)}" for kind in args[2:]))  # DIR as given
    elif mode == "pack-console" and len(args) == 3:
        print(f"{args[0]}/{pack_console_file(int(args[1]), int(args[2]))}")
    elif mode == "rank-console" and len(args) == 3:
        print(f"{args[0]}/{console_file(int(args[1]), int(args[2]))}")
    elif mode == "table" and len(args) >= 3:
        rows = [(name, int(num)) for name, num in (row.split() for row in args[2:])]
        print("\n".join(best_table(args[0], args[1], rows)))
    else:
        sys.exit(USAGE)


if __name__ == "__main__":
    main(sys.argv[1:])
