"""The ring over files in <session>/exchange (SPEC §7), for networks that share a filesystem.

Network i publishes its pre-graft weights as net<i>_epoch<e>.t7 (atomically) and reads those of its
predecessor. Each process keeps a heartbeat file net<i>.alive (its pid and host, touched by the watcher),
writes net<i>.failed when it stops on an error and net<i>.done when it finishes, so a crashed or killed
network stops the others within seconds instead of hanging them.
"""
import json
import os
import time
from pathlib import Path

import torch

from ..checkpoint import atomic_save, check_compatible
from ..errors import UserError
from ..session import exchange_dir, exchange_marker, exchange_weights
from .base import ExchangeError, PeerWatch, RingMember

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
        self._start_clock = time.monotonic()
        self._watches = [PeerWatch(j) for j in self.others()]

    @classmethod
    def for_record(cls, record, **settings):
        """The member for network record.index of record.num, through the record's session directory."""
        return cls(exchange_dir(record.session_dir), record.index, record.num, **settings)

    @classmethod
    def announce_failure(cls, record, reason):
        """net<i>.failed in the record's session directory: the peers stop at once, and the session's
        summary shows the reason."""
        _announce_failure(exchange_dir(record.session_dir), record.index, reason)

    def start(self):
        """Announce this network (heartbeat file), clear its markers of an earlier run, start watching."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for kind in ("failed", "done"):
            exchange_marker(self.dir, self.index, kind).unlink(missing_ok=True)
        _write_json(exchange_marker(self.dir, self.index, "alive"),
                    {"pid": os.getpid(), "host": self.host, "started": self.started})
        self._start_watching("ring-watch")
        return self

    def _watch_once(self):
        try:
            os.utime(exchange_marker(self.dir, self.index, "alive"))
        except OSError:
            pass
        # one failure is enough: once found, the directory need not be read again
        return self._find_failure() if self._failure is None else None

    def _find_failure(self):
        """A one-line reason when another network has failed or vanished, else None."""
        now = time.monotonic()
        for watch in self._watches:
            j = watch.index
            if exchange_marker(self.dir, j, "done").exists():
                continue
            failed = _read_json(exchange_marker(self.dir, j, "failed"))
            if failed is not None and failed.get("time", 0) >= self.started - STALE_SECONDS:
                return f"network {j} failed: {failed.get('reason', 'unknown reason')}"
            alive = _read_json(exchange_marker(self.dir, j, "alive"))
            try:
                mtime = exchange_marker(self.dir, j, "alive").stat().st_mtime_ns
            except OSError:
                mtime = None
            if mtime is not None and watch.beat(mtime, now):
                watch.seen_alive = True
            here = self.local_liveness(alive)
            if here:
                watch.seen_alive = True
                continue
            dead = here is False or watch.silent(now) > self.heartbeat_timeout
            if dead and watch.seen_alive:
                return self.stopped(j, alive)
            if not watch.seen_alive and now - self._start_clock > self.startup_timeout:
                return f"network {j} has not started within {self.startup_timeout:.0f}s"
        return None

    def publish(self, epoch, state_dict):
        """Write this network's pre-graft weights of `epoch`, once its successor has consumed all but the
        previous epoch's file (so at most two files per network exist)."""
        older = exchange_weights(self.dir, self.index, epoch - 2)
        self.wait_for(f"network {self.successor} to read epoch {epoch - 2}", lambda: not older.exists())
        atomic_save({"net": state_dict, "epoch": epoch, "arch": self.arch},
                    exchange_weights(self.dir, self.index, epoch))

    def receive(self, epoch, reference):
        """The predecessor's pre-graft weights of `epoch`, checked against the `reference` state dict;
        its file of the epoch before is removed, since nobody reads it again."""
        path = exchange_weights(self.dir, self.peer, epoch)
        self.wait_for(f"network {self.peer}'s weights of epoch {epoch} ({path})", path.exists)
        payload = torch.load(path, map_location=self.device, weights_only=False)
        if payload.get("arch") != self.arch or payload.get("epoch") != epoch:
            raise ExchangeError(f"{path} holds {payload.get('arch')!r} epoch {payload.get('epoch')}, expected "
                                f"{self.arch!r} epoch {epoch}: the peers run different configurations")
        try:
            check_compatible(payload["net"], reference, f"network {self.peer}'s weights ({path})")
        except UserError as err:
            raise ExchangeError(str(err)) from None
        exchange_weights(self.dir, self.peer, epoch - 1).unlink(missing_ok=True)
        return payload["net"]

    def close(self, error=None):
        """Stop watching and leave a marker: net<i>.done, or net<i>.failed with the reason."""
        self._stop_watching()
        if error is None:
            _write_json(exchange_marker(self.dir, self.index, "done"), {"time": time.time()})
        else:
            _announce_failure(self.dir, self.index, error)
