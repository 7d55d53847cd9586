"""One network of a grafting session, end to end: train, graft at the end of every epoch through
the ring exchange (or from a noise / internal scion), and leave a marker for the others on the way out."""
import contextlib
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
    `evaluate` (--eval-grafted), the grafted network is evaluated too (test_acc_grafted)."""

    def __init__(self, model, record, exchange=None, evaluate=None):
        self.model = model
        self.record = record
        self.exchange = exchange
        self.evaluate = evaluate
        self.grafter = Grafter.for_record(model, record)

    def __call__(self, epoch):
        start = time.perf_counter()
        r = self.record
        if r.source == "noise":
            entry = {"source": "noise", "layers": graft_noise(self.model, r.noise_decay ** epoch, r.invalid_threshold)}
        elif r.source == "internal":
            entry = {"source": "internal", "layers": graft_internal(self.model, r.invalid_threshold, r.a, r.c,
                                                                        r.entropy_bins)}
        else:
            own = self.model.state_dict()
            self.exchange.publish(epoch, own)
            receiving = time.perf_counter()
            peer = self.exchange.receive(epoch, own)
            waited = time.perf_counter() - receiving
            entry = {"peer": self.exchange.peer, "level": r.level, "layers": self.grafter.graft(peer)}
            entry["wait_time"] = waited
        entry["time"] = time.perf_counter() - start
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
    """Around a whole run's script, given its run record. When its session directory exists already (a
    launcher made it, an earlier run wrote it) the run is claimed at once (a second process for the same
    network is refused before it writes anything, else that happens when the session opens:
    assembly.open_session), the temporaries a killed earlier process left are removed, and in a ring the
    network shows itself alive from now on (ring.announce_start). An error before the ring opens (bad data,
    a refused resume, SIGTERM) still leaves what the ring's backend needs (ring.announce_failure), so the
    peers stop at once instead of waiting for a network that never comes. `files`: the run's files in the
    session directory (default: network record.index's)."""
    files = files or network_files(record.index)
    ring = (record.num or 1) > 1
    heartbeat = None
    try:
        if Path(record.session_dir).is_dir():
            claim_run(record.session_dir, files, f"network {record.index} of {record.session_dir}")
            for path in stale_temporaries(record.session_dir, files, record.index if ring else None):
                path.unlink(missing_ok=True)
            if ring:
                heartbeat = announce_start(record)
        yield
    except BaseException as err:
        if ring and (isinstance(err, Terminated) or not isinstance(err, SystemExit)) and \
                not isinstance(err, AlreadyRunning):
            announce_failure(record, _reason(err))
        raise
    finally:
        if heartbeat is not None:
            heartbeat.stop()
        release_run(record.session_dir, files)


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
            information = f"entropy, {record.entropy_bins} bins" if record.criterion == "entropy" else record.criterion
            session.log(f"network {record.index}/{record.num} grafts from network {exchange.peer} "
                        f"({record.level} level, {information}, A={record.a}, c={record.c}); "
                        f"{hook.grafter.describe()}")
        trainer.fit(hook)
    except BaseException as err:
        session.log(f"error: {_reason(err)}", console=False)
        if not isinstance(err, (UserError, KeyboardInterrupt, SystemExit)):
            session.log(traceback.format_exc(), console=False)
        if exchange is not None:
            culprit = exchange.close(error=_reason(err))
            if isinstance(err, Terminated) and culprit:
                err.reason = culprit  # the one line the script ends with names who stopped the ring
        raise
    if exchange is not None:
        exchange.close()
    session.log(f"network {record.index} finished: best test accuracy {trainer.best_acc:.2f}%")
    session.close()
    return trainer.best_acc
