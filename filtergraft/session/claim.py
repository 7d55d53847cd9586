"""One process per run of a session: network i holds <dir>/<i>.lock (a single run <dir>/run.lock) from its
start to its end, and only the holder writes that run's files and markers.

The hold is an flock, which the kernel drops when the process ends however it ends (kill -9 included), so
a killed run never blocks the next; the file names the holder (pid, host, start time) for the message that
refuses a second process. A run that ends removes the file while it still holds it, leaving the directory
as the run found it. A filesystem without locks (some network mounts) is said once in the log and the
run goes on unguarded.
"""
import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from ..errors import UserError
from .names import exchange_dir


class AlreadyRunning(UserError):
    """Another process holds the run: this one must neither run it nor write its markers."""


class Claim:
    """The hold of the lock file at `path` for the run it names as `what` ("network 2 of <dir>")."""

    def __init__(self, path, what):
        self.path = Path(path)
        self.what = what
        self.fd = None
        self.unguarded = None  # why the hold could not be taken, on a filesystem without locks

    def acquire(self):
        """Hold the lock, or raise a UserError naming the process that holds it."""
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise UserError(f"cannot create {self.path}: {err.strerror}; choose a writable session "
                                f"directory") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise AlreadyRunning(f"{self.what} is already running ({holder}); only one process may run it: "
                                f"stop that one first, or give this one another --i or directory") from None
            except OSError as err:
                if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    os.close(fd)
                    raise
                self.unguarded = f"{self.path.parent} has no file locks ({err.strerror})"
            if _same_file(fd, self.path):
                break
            os.close(fd)  # the previous holder removed the file between our open and our lock: take the new one
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}).encode())
        self.fd = fd
        return self

    def release(self):
        """Remove the lock file while still holding it, then let go."""
        if self.fd is None:
            return
        try:
            if _same_file(self.fd, self.path):
                self.path.unlink()
        except OSError:
            pass  # a vanished session directory leaves nothing to tidy
        os.close(self.fd)
        self.fd = None


def _same_file(fd, path):
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except OSError:
        return False


def _read_holder(fd):
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {holder['pid']} on {holder['host']}"
    except (OSError, ValueError, KeyError):
        return "a process starting up"


# The claims this process holds, by lock file: a run is claimed once, early or when its directory opens.
_HELD = {}


def claim_run(root, files, what):
    """Hold run `files` (session.names.SessionFiles) of session directory `root`, named `what` in messages,
    creating the directory when it does not exist; a run this process holds already is not claimed again."""
    root = Path(root)
    path = root / files.lock
    if path in _HELD:
        return _HELD[path]
    if not root.is_dir():
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"cannot write to session directory {root} ({err.strerror}); choose a writable "
                            f"directory") from None
    _HELD[path] = Claim(path, what).acquire()
    return _HELD[path]


def release_run(root, files):
    """Let go of run `files` of `root`, when this process holds it."""
    claim = _HELD.pop(Path(root) / files.lock, None)
    if claim is not None:
        claim.release()


def stale_temporaries(root, files, index=None):
    """The temporary files a killed run of `files` left (a name ending in .tmp<pid>): in `root`, and with a
    network `index` its exchange files too. Only the run's holder may call this: nobody else writes them."""
    root = Path(root)
    found = [p for name in (files.best, files.last, files.metrics) for p in root.glob(f"{name}.tmp*")]
    if index is not None:
        found += exchange_dir(root).glob(f"net{index}[._]*.tmp*")
    return [p for p in found if p.name.rsplit(".tmp", 1)[1].isdigit()]
