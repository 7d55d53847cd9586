"""User-facing errors: one line, a non-zero exit, no traceback."""
import contextlib
import sys


class UserError(Exception):
    """A mistake the user can fix (bad flag, missing data, foreign file); its message says how."""


@contextlib.contextmanager
def exit_on_user_error(prog=None):
    """Turn a UserError raised inside the block into `prog: error: message` on stderr and exit 2."""
    try:
        yield
    except UserError as err:
        name = prog or sys.argv[0]
        print(f"{name}: error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
