"""Summarise session directories into a Markdown table beside the papers' numbers, and plot them.

    python scripts/summarize.py checkpoint/grafting_resnet32_c10_n2 --baseline checkpoint/baseline_resnet32_c10
    python scripts/summarize.py runs/cifar_grafting --csv results.csv --no-plots
    python scripts/summarize.py runs/demo/grafting --tensorboard    # then: tensorboard --logdir runs/demo/grafting/tb

A directory that holds sessions (baseline.sh's run1..runN, a reproduce script's runs/...) stands for all of
them. Sessions still running are summarised with the epochs done so far. Directories that cannot be read
are named on stderr, one line each; the exit status is 0 when at least one session was read, 2 when none.
"""
import argparse
import sys

from filtergraft.errors import UserError, exit_on_user_error
from filtergraft.results.tables import markdown, write_csv
from filtergraft.session import find_sessions

PROG = "summarize.py"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="session directories (or directories holding them)")
    parser.add_argument("--baseline", action="append", default=[], metavar="DIR",
                        help="baseline session(s), drawn in the plots of the sessions with the same model, "
                             "data and classes (repeatable)")
    parser.add_argument("--csv", metavar="FILE", help="also write the table as CSV")
    parser.add_argument("--no-plots", action="store_true", help="only the table")
    parser.add_argument("--tensorboard", action="store_true",
                        help="also write TensorBoard event files into each DIR session's tb/<i>/ from its metrics "
                             "files and best checkpoints, as --tensorboard writes them during training (needs "
                             "the tensorboard package; networks that have event files already are left alone)")
    return parser.parse_intermixed_args(argv)


def warn(message):
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def main(argv=None):
    args = parse_args(argv)
    if args.tensorboard:
        from filtergraft.board import convert_session, summary_writer  # torch and tensorboard: only when asked

        summary_writer()  # a missing tensorboard package is refused before anything is read
    baselines, skipped_baselines = find_sessions(args.baseline)
    sessions, skipped = find_sessions(args.dirs)
    for path, reason in skipped_baselines + skipped:
        warn(f"skipped {path}: {reason}")
    known = {s.path.resolve() for s in sessions}
    everything = [b for b in baselines if b.path.resolve() not in known] + sessions
    if not everything:
        raise UserError("none of the given directories is a readable session")
    plots = []
    if not args.no_plots:
        from filtergraft.results.plots import write_plots  # matplotlib and torch load only when plotting

        for session in everything:
            plots += write_plots(session, baselines)
    boards = []
    if args.tensorboard:
        for session in sessions:
            boards += convert_session(session)
    for session in everything:
        for problem in session.problems:
            warn(f"{session.path}: {problem}")
    print(markdown(everything))
    if args.csv:
        try:
            write_csv(everything, args.csv)
        except OSError as err:
            raise UserError(f"cannot write --csv {args.csv} ({err.strerror})") from None
        print(f"\ntable written to {args.csv}")
    if plots:
        print("\nplots:")
        for path in plots:
            print(f"  {path}")
    if boards:
        print("\nTensorBoard event files (view: tensorboard --logdir SESSION/tb):")
        for path in boards:
            print(f"  {path}")


if __name__ == "__main__":
    with exit_on_user_error(PROG):
        main()
