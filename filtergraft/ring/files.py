"""The ring over files in <session>/exchange (SPEC §7), for networks that share a filesystem.

Network i publishes its pre-graft weights as net<i>_epoch<e>.t7 (atomically) and reads those of its
predecessor. From the start of its process (before its data loads) it keeps a heartbeat file net<i>.alive
(its pid, host and start time, touched every HEARTBEAT_SECONDS); it writes net<i>.failed when it stops on an
error and net<i>.done (with the last epoch it published) when it finishes. A peer is dead when its process
on this host has gone, or when its heartbeat has not moved for --heartbeat-timeout (a process on another
host, or one frozen or hung here): the others stop within seconds instead of waiting out --graft-timeout.
"""
import json
import os
import socket
import threading
import time
from pathlib import Path

from ..checkpoint import atomic_save, check_compatible, load_checkpoint
from ..errors import UserError
from ..session import exchange_dir, exchange_marker, exchange_weights
from .base import HEARTBEAT_SECONDS, PeerWatch, RingMember, where

# A marker older than this, before this run started, is an earlier run's (clocks of hosts differ a little).
STALE_SECONDS = 5


def _read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _write_json(path, record):
    tmp = Path(f"{path}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)


class Heartbeat:
    """Network `index`'s heartbeat file in exchange directory `directory`: written with this process's pid,
    host and start time, then touched every HEARTBEAT_SECONDS by a thread of its own until stopped."""

    def __init__(self, directory, index, started=None):
        self.path = exchange_marker(directory, index, "alive")
        self.started = time.time() if started is None else started
        self._stop = threading.Event()
        self._thread = None

    def start(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _write_json(self.path, {"pid": os.getpid(), "host": socket.gethostname(), "started": self.started})
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{self.path.name}", daemon=True)
        self._thread.start()
        return self

    def _beat(self):
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                os.utime(self.path)
            except OSError:
                pass  # a vanished exchange directory: the next write into it says so

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * HEARTBEAT_SECONDS)


def _announce_failure(directory, index, reason):
    """Write net<index>.failed, so that the other networks stop instead of waiting for this one."""
    try:
        Path(directory).mkdir(parents=True, exist_ok=True)
        _write_json(exchange_marker(directory, index, "failed"), {"time": time.time(), "reason": reason})
    except OSError:
        pass  # an unwritable session directory was the error being reported


class RingExchange(RingMember):
    """The ring over files in `directory` (a session's exchange directory)."""

    # a peer about to publish is picked up at once; a slow one is polled less, to spare the filesystem
    # (often a network one) while it finishes its epoch
    POLL_DELAYS = (0.002, 0.05)

    def __init__(self, directory, index, num, **settings):
        super().__init__(index, num, **settings)
        self.dir = Path(directory)
        self.started = time.time()
        self.published = 0
        self._start_clock = time.monotonic()
        self._watches = [PeerWatch(j) for j in self.others()]
        self._heartbeat = None

    @classmethod
    def for_record(cls, record, **settings):
        """The member for network record.index of record.num, through the record's session directory."""
        return cls(exchange_dir(record.session_dir), record.index, record.num, **settings)

    @classmethod
    def announce_start(cls, record):
        """From the first moment of network record.index's process: its earlier run's end markers cleared
        and its heartbeat beating (a Heartbeat, stopped by the caller), so that a death during start-up,
        before the ring opens, is seen too."""
        directory = exchange_dir(record.session_dir)
        _clear_end_markers(directory, record.index)
        return Heartbeat(directory, record.index).start()

    @classmethod
    def announce_failure(cls, record, reason):
        """net<i>.failed in the record's session directory: the peers stop at once, and the session's
        summary shows the reason."""
        _announce_failure(exchange_dir(record.session_dir), record.index, reason)

    def start(self):
        """Announce this network (heartbeat file), clear its markers of an earlier run, start watching."""
        _clear_end_markers(self.dir, self.index)
        self._heartbeat = Heartbeat(self.dir, self.index, self.started).start()
        self._start_watching("ring-watch")
        return self

    def _watch_once(self):
        # one failure is enough: once found, the directory need not be read again
        return self._find_failure() if self._failure is None else None

    def _this_run(self, marker):
        """Whether a marker's time is this run's, not a leftover of an earlier one."""
        return marker is not None and marker.get("time", marker.get("started", 0)) >= self.started - STALE_SECONDS

    def _find_failure(self):
        """A one-line reason when another network has failed or vanished, else None. A network that
        finished (done, this run) is no longer watched; what it did not publish is the waits' concern."""
        now = time.monotonic()
        for watch in self._watches:
            j = watch.index
            if self._this_run(_read_json(exchange_marker(self.dir, j, "done"))):
                continue
            failed = _read_json(exchange_marker(self.dir, j, "failed"))
            if self._this_run(failed):
                return f"network {j} failed: {failed.get('reason', 'unknown reason')}"
            alive = _read_json(exchange_marker(self.dir, j, "alive"))
            try:
                mtime = exchange_marker(self.dir, j, "alive").stat().st_mtime_ns
            except OSError:
                mtime = None
            if mtime is not None and watch.beat(mtime, now):
                watch.seen_alive = True
            if not (watch.seen_alive or self._this_run(alive)):
                # nothing of this run yet: the file, if any, is an earlier run's
                if now - self._start_clock > self.startup_timeout:
                    return f"network {j} has not started within {self.startup_timeout:.0f}s"
                continue
            here = self.local_liveness(alive)
            if here is False:
                return self.stopped(j, alive)
            silent = watch.silent(now)
            if silent > self.heartbeat_timeout:
                if here:
                    return (f"network {j} ({where(alive)}) runs but its heartbeat has not moved for {silent:.0f}s "
                            f"(--heartbeat-timeout): it is stopped (SIGSTOP) or hung")
                return self.stopped(j, alive)
        return None

    def _finished_before(self, j, epoch):
        """A reason to give up when network `j` has finished (this run) without reaching `epoch`, else None."""
        done = _read_json(exchange_marker(self.dir, j, "done"))
        if self._this_run(done) and done.get("epoch", epoch) < epoch:
            return (f"network {j} finished after epoch {done['epoch']}, but network {self.index} needs it at epoch "
                    f"{epoch}: give every network of the session the same --epochs")
        return None

    def _passed(self, j, epoch, path):
        """A reason to give up when network `j` is already past `epoch` and its file of it is gone, else None."""
        later = exchange_weights(self.dir, j, epoch + 1)
        if later.exists() and not path.exists():
            return (f"network {j} is past epoch {epoch}, and its weights of it ({path.name}) are gone: the networks' "
                    f"last checkpoints are too far apart to resume this ring; start the session anew in another "
                    f"directory")
        return None

    def _wait(self, what, ready, *hopeless):
        """wait_for `ready()`, giving up at once with the reason the first of `hopeless()` gives."""
        def poll():
            if ready():
                return True
            for reason in hopeless:
                why = reason()
                if why is not None:
                    raise self._error(f"network {self.index} stops: {why}")
            return False
        self.wait_for(what, poll)

    def publish(self, epoch, state_dict):
        """Write this network's pre-graft weights of `epoch`, once its successor has consumed all but the
        previous epoch's file (so at most two files per network exist)."""
        older = exchange_weights(self.dir, self.index, epoch - 2)
        self._wait(f"network {self.successor} to read epoch {epoch - 2}", lambda: not older.exists(),
                   lambda: self._finished_before(self.successor, epoch - 1))
        try:
            atomic_save({"net": state_dict, "epoch": epoch, "arch": self.arch},
                        exchange_weights(self.dir, self.index, epoch))
        except UserError as err:
            raise self._error(f"network {self.index} stops: {err}") from None
        self.published = epoch

    def receive(self, epoch, reference):
        """The predecessor's pre-graft weights of `epoch`, checked against the `reference` state dict;
        its file of the epoch before is removed, since nobody reads it again."""
        path = exchange_weights(self.dir, self.peer, epoch)
        self._wait(f"network {self.peer}'s weights of epoch {epoch} ({path})", path.exists,
                   lambda: self._finished_before(self.peer, epoch), lambda: self._passed(self.peer, epoch, path))
        try:
            payload = load_checkpoint(path, f"network {self.peer}'s exchange file", map_location=self.device)
        except UserError as err:
            raise self._error(str(err)) from None
        if not isinstance(payload, dict) or not isinstance(payload.get("net"), dict):
            raise self._error(f"{path} is no exchange file of this project (no 'net' state dict); something "
                              f"else wrote into the session's exchange directory")
        if payload.get("arch") != self.arch or payload.get("epoch") != epoch:
            raise self._error(f"{path} holds {payload.get('arch')!r} epoch {payload.get('epoch')}, expected "
                              f"{self.arch!r} epoch {epoch}: the peers run different configurations")
        try:
            check_compatible(payload["net"], reference, f"network {self.peer}'s weights ({path})")
        except UserError as err:
            raise self._error(str(err)) from None
        exchange_weights(self.dir, self.peer, epoch - 1).unlink(missing_ok=True)
        return payload["net"]

    def close(self, error=None):
        """Stop watching and beating, and leave a marker: net<i>.done with the last epoch published, or
        net<i>.failed with the reason."""
        self._stop_watching()
        if self._heartbeat is not None:
            self._heartbeat.stop()
        if error is None:
            try:
                _write_json(exchange_marker(self.dir, self.index, "done"), {"time": time.time(), "epoch": self.published})
            except OSError as err:
                raise UserError(f"cannot write {exchange_marker(self.dir, self.index, 'done')}: {err.strerror}; the "
                                f"network finished, but its peers will not know it") from None
        else:
            _announce_failure(self.dir, self.index, error)


def _clear_end_markers(directory, index):
    for kind in ("failed", "done"):
        exchange_marker(directory, index, kind).unlink(missing_ok=True)
