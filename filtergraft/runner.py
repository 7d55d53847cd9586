"""One network of a grafting session, end to end: train, graft at the end of every epoch through
the ring exchange (or from a noise / internal scion), and leave a marker for the others on the way out."""
import contextlib
import dataclasses
import time
import traceback
from pathlib import Path

from .errors import Terminated, UserError
from .grafting import Grafter, graft_internal, graft_noise
from .ring import announce_failure, announce_start, open_ring
from .session import AlreadyRunning, claim_run, network_files, release_run, stale_temporaries

SOURCES = ("external", "noise", "internal")
LEVELS = ("layer", "filter")


class GraftHook:
    """The end-of-epoch graft of network `record` (a record.RunRecord, SPEC §3): publish, receive the
    predecessor's weights through `exchange`, graft; or a scion of its own (record.source). With
    `evaluate` (--eval-grafted), the grafted network is evaluated too (test_acc_grafted). A pack calls
    `publish` for all its members before any `complete`s, since each member receives from another."""

    def __init__(self, model, record, exchange=None, evaluate=None):
        self.model = model
        self.record = record
        self.exchange = exchange
        self.evaluate = evaluate
        self.grafter = Grafter.for_record(model, record)
        self._published = (None, 0.0)  # (the pre-graft state dict offered, seconds publishing took)

    def __call__(self, epoch):
        self.publish(epoch)
        return self.complete(epoch)

    def publish(self, epoch):
        """Offer this network's pre-graft weights of `epoch` to its successor (an external scion only)."""
        start = time.perf_counter()
        own = None
        if self.record.source not in ("noise", "internal"):
            own = self.model.state_dict()
            self.exchange.publish(epoch, own)
        self._published = (own, time.perf_counter() - start)

    def complete(self, epoch):
        """Graft (after `publish`) and return the metrics of it; its time includes the publishing."""
        start = time.perf_counter()
        own, publishing = self._published
        r = self.record
        if r.source == "noise":
            entry = {"source": "noise", "layers": graft_noise(self.model, r.noise_decay ** epoch, r.invalid_threshold)}
        elif r.source == "internal":
            entry = {"source": "internal", "layers": graft_internal(self.model, r.invalid_threshold, r.a, r.c,
                                                                        r.entropy_bins)}
        else:
            peer = self.exchange.receive(epoch, own)
            waited = time.perf_counter() - start
            entry = {"peer": self.exchange.peer, "level": r.level, "layers": self.grafter.graft(peer)}
            entry["wait_time"] = waited
        entry["time"] = publishing + time.perf_counter() - start
        if self.evaluate is None:
            return {"graft": entry}
        grafted = self.evaluate()
        return {"graft": entry, "test_loss_grafted": grafted["test_loss"], "test_acc_grafted": grafted["test_acc"]}


def _reason(err):
    if isinstance(err, UserError):
        return str(err)
    if isinstance(err, KeyboardInterrupt):
        return "interrupted"
    if isinstance(err, Terminated):
        return str(err)
    if isinstance(err, SystemExit):
        return f"terminated (exit {err.code})"
    return f"{type(err).__name__}: {err}"


@contextlib.contextmanager
def running_network(record, files=None):
    """Around a whole run's script, given its run record, for each network the process trains (record.pack
    under --pack, else record.index). When the session directory exists already (a launcher made it, an
    earlier run wrote it) each is claimed at once (a second process for the same network is refused before
    it writes anything; else that happens when its session opens: assembly.open_session), the temporaries a
    killed earlier process left are removed, and in a ring each shows itself alive from now on
    (ring.announce_start). An error before the ring opens (bad data, a refused resume, SIGTERM) still leaves
    what the ring's backend needs (ring.announce_failure), so the peers stop at once instead of waiting for
    a network that never comes. `files`: a single run's files (default: network i's)."""
    records = [dataclasses.replace(record, index=i) for i in record.pack] if record.pack else [record]
    owned = [(r, files or network_files(r.index)) for r in records]
    ring = (record.num or 1) > 1
    heartbeats = []
    try:
        if Path(record.session_dir).is_dir():
            for member, member_files in owned:
                claim_run(record.session_dir, member_files, f"network {member.index} of {record.session_dir}")
                for path in stale_temporaries(record.session_dir, member_files, member.index if ring else None):
                    path.unlink(missing_ok=True)
            if ring:
                heartbeats = [announce_start(member) for member, _ in owned]
        yield
    except BaseException as err:
        if ring and (isinstance(err, Terminated) or not isinstance(err, SystemExit)) and \
                not isinstance(err, AlreadyRunning):
            for member, _ in owned:
                announce_failure(member, _reason(err))
        raise
    finally:
        for heartbeat in heartbeats:
            if heartbeat is not None:
                heartbeat.stop()
        for _, member_files in owned:
            release_run(record.session_dir, member_files)


def graft_line(record, peer, grafter):
    """The log line saying where network record.index takes its scion (network `peer`) and how it grafts."""
    information = f"entropy, {record.entropy_bins} bins" if record.criterion == "entropy" else record.criterion
    return (f"network {record.index}/{record.num} grafts from network {peer} ({record.level} level, {information}, "
            f"A={record.a}, c={record.c}); {grafter.describe()}")


def log_failure(session, err):
    """Log why a run stops in its session's file (with the traceback of an unexpected error); the reason."""
    reason = _reason(err)
    session.log(f"error: {reason}", console=False)
    if not isinstance(err, (UserError, KeyboardInterrupt, SystemExit)):
        session.log(traceback.format_exc(), console=False)
    return reason


def run_network(trainer, record):
    """Train `trainer`'s network (assembled, and resumed, by assembly.build_trainer) as network
    record.index of the session, grafting every epoch when the session has peers or a scion source; any
    failure is logged and announced to the peers."""
    session = trainer.session
    exchange = open_ring(record, arch=record.arch, device=trainer.device, log=session.log)
    grafting = exchange is not None or record.source != "external"
    try:
        hook = None
        if grafting:
            hook = GraftHook(trainer.model, record, exchange, trainer.evaluate if record.eval_grafted else None)
        if exchange is not None:
            trainer.check_abort = exchange.check
            session.log(graft_line(record, exchange.peer, hook.grafter))
        trainer.fit(hook)
    except BaseException as err:
        reason = log_failure(session, err)
        if exchange is not None:
            culprit = exchange.close(error=reason)
            if isinstance(err, Terminated) and culprit:
                err.reason = culprit  # the one line the script ends with names who stopped the ring
        raise
    if exchange is not None:
        exchange.close()
    session.log(f"network {record.index} finished: best test accuracy {trainer.best_acc:.2f}%")
    session.close()
    return trainer.best_acc
