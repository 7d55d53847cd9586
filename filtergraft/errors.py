"""User-facing errors: one line, a non-zero exit, no traceback."""
import contextlib
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


@contextlib.contextmanager
def exit_on_user_error(prog=None):
    """Turn a UserError raised inside the block into `prog: error: message` on stderr and exit 2."""
    try:
        yield
    except UserError as err:
        name = prog or sys.argv[0]
        print(f"{name}: error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
