"""User-facing errors: one line, a non-zero exit, no traceback; Ctrl-C and SIGTERM end a script the same way."""
import contextlib
import signal
import sys


class UserError(Exception):
    """A mistake the user can fix (bad flag, missing data, foreign file); its message says how."""


class FlagError(UserError):
    """A bad value of one run setting (a RunRecord field), worded with the flag of the script that was run:
    the library says `{flag}` where the setting's flag goes, and the script's parser fills in its own
    spelling (`--cifar` or `--num_classes`, `--data` or `--data_path`)."""

    def __init__(self, field, template):
        self.field = field
        self.template = template
        super().__init__(self.worded(f"--{field}"))

    def worded(self, flag):
        return self.template.replace("{flag}", flag)


class Terminated(SystemExit):
    """SIGTERM arrived (a launcher stopping its networks, torchrun after a peer failed, a batch scheduler):
    raised in the main thread so that the run's clean-up (markers, logs) happens on the way out."""

    def __init__(self, signum):
        super().__init__(128 + signum)
        self.signum = signum
        self.reason = None  # why whoever sent the signal stopped the run, when the run found out

    def __str__(self):
        said = f"terminated by {signal.Signals(self.signum).name}"
        return f"{said} ({self.reason})" if self.reason else said


def _stop(signum, frame):
    # The first signal stops the run; more of them (Ctrl-C reaches the launcher's networks directly and the
    # launcher passes it on as SIGTERM) would break off the clean-up it starts. A launcher's SIGKILL ends a
    # clean-up that hangs.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signum)


def handle_interrupts():
    """Ctrl-C raises KeyboardInterrupt and SIGTERM raises Terminated, once, even in a process started in the
    background by a shell (which starts it with SIGINT ignored, so that Ctrl-C would not reach it)."""
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)


@contextlib.contextmanager
def exit_on_user_error(prog=None):
    """Turn a UserError raised inside the block into `prog: error: message` on stderr and exit 2, and Ctrl-C
    or SIGTERM into one line too (exit 130 or 143)."""
    name = prog or sys.argv[0]
    try:
        yield
    except UserError as err:
        print(f"{name}: error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr, flush=True)
        sys.exit(128 + signal.SIGINT)
    except Terminated as err:
        print(f"{name}: {err}", file=sys.stderr, flush=True)
        sys.exit(err.code)
