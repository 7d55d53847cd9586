"""One network of a grafting session, end to end: train, graft at the end of every epoch through
the ring exchange (or from a noise / internal scion), and leave a marker for the others on the way out."""
import contextlib
import dataclasses
import time
import traceback
from pathlib import Path

from .errors import Terminated, UserError
from .grafting import Grafter, graft_internal, graft_noise
from .ring import announce_failure, announce_start, open_ring, uses_ring
from .session import AlreadyRunning, claim_run, network_files, release_run, stale_temporaries

SOURCES = ("external", "noise", "internal")
LEVELS = ("layer", "filter")


class GraftHook:
    """The end-of-epoch graft of network `record` (a record.RunRecord, SPEC §3): publish, receive the
    predecessor's weights through `exchange`, graft; or a scion of its own (record.source). With
    `evaluate` (--eval-grafted), the grafted network is evaluated too (test_acc_grafted). `share()`, when
    given, hands the grafted weights to the network's other ranks and returns every rank's digest of them
    (parallel.NetworkGroup.share_weights), kept as the graft's rank_digests.
    A pack calls `publish` for all its members before any `complete`s, since each member receives from another."""

    def __init__(self, model, record, exchange=None, evaluate=None, share=None):
        self.model = model
        self.record = record
        self.exchange = exchange
        self.evaluate = evaluate
        self.share = share
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
        if self.share is not None:
            entry["rank_digests"] = self.share()
        entry["time"] = publishing + time.perf_counter() - start
        if self.evaluate is None:
            return {"graft": entry}
        grafted = self.evaluate()
        return {"graft": entry, "test_loss_grafted": grafted["test_loss"], "test_acc_grafted": grafted["test_acc"]}


class RankGraft:
    """The end-of-epoch graft on a network's ranks other than its leader: take the weights the leader
    grafted (`share`), and join the evaluation of the grafted network (--eval-grafted) when there is one."""

    def __init__(self, share, evaluate=None):
        self.share = share
        self.evaluate = evaluate

    def __call__(self, epoch):
        self.share()
        if self.evaluate is not None:
            self.evaluate()
        return {}


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
    if record.rank:  # a network's ranks but its leader leave its session's files to the leader
        yield
        return
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


def graft_hook(trainer, record, exchange):
    """The end-of-epoch graft of network record.index, or None when it does not graft: on a network's
    leader (or its one rank) a GraftHook that shares the grafted weights with its other ranks, on those a
    RankGraft."""
    if not uses_ring(record) and record.source == "external":
        return None
    group = trainer.group
    share = (lambda: group.share_weights(trainer.model)) if group is not None else None
    evaluate = trainer.evaluate if record.eval_grafted else None
    if record.rank:
        return RankGraft(share, evaluate)
    return GraftHook(trainer.model, record, exchange, evaluate, share)


def rank_failure(group, err):
    """With several ranks per network: the error to end with when another rank is the cause (it is named,
    parallel.NetworkGroup.culprit; a collective it broke becomes that one line), else `err`; this rank's own
    stop is announced."""
    culprit = group.culprit()
    group.announce_failure(outside=isinstance(err, (KeyboardInterrupt, SystemExit)))
    if culprit is None:
        return err
    line = f"{group.name()} stops: {culprit}"
    if isinstance(err, Terminated):
        err.reason = line
        return err
    return err if isinstance(err, (UserError, KeyboardInterrupt, SystemExit)) else UserError(line)


def run_network(trainer, record):
    """Train `trainer`'s network (assembled, and resumed, by assembly.build_trainer) as network
    record.index of the session, grafting every epoch when the session has peers or a scion source; any
    failure is logged and announced to the peers. With several ranks per network, only the leader joins the
    ring; the others take its grafted weights."""
    session = trainer.session
    exchange = None if record.rank else open_ring(record, arch=record.arch, device=trainer.device, log=session.log)
    group = trainer.group
    try:
        hook = graft_hook(trainer, record, exchange)
        if exchange is not None:
            trainer.check_abort = exchange.check
            session.log(graft_line(record, exchange.peer, hook.grafter))
        trainer.fit(hook)
    except BaseException as err:
        stop = rank_failure(group, err) if group is not None else err
        reason = log_failure(session, stop)
        if exchange is not None:
            culprit = exchange.close(error=reason)
            if isinstance(err, Terminated) and culprit and not err.reason:
                err.reason = culprit  # the one line the script ends with names who stopped the ring
        if stop is not err:
            raise stop from None
        raise
    if exchange is not None:
        exchange.close()
    if group is not None:
        group.close()
    session.log(f"network {record.index} finished: best test accuracy {trainer.best_acc:.2f}%")
    session.close()
    return trainer.best_acc
