"""One network of a grafting session, end to end: resume, train, graft at the end of every epoch through
the ring exchange (or from a noise / internal scion), and leave a marker for the others on the way out."""
import contextlib
import signal
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from .dist_exchange import DistRingExchange
from .errors import UserError
from .exchange import RingExchange, announce_failure
from .grafting import Grafter, graft_internal, graft_noise

SOURCES = ("external", "noise", "internal")
LEVELS = ("layer", "filter")
EXCHANGES = ("file", "dist")


@dataclass
class GraftSettings:
    """How network `index` of `num` grafts (SPEC §3)."""

    index: int = 1
    num: int = 1
    a: float = 0.4
    c: float = 500.0
    level: str = "layer"
    criterion: str = "entropy"
    source: str = "external"
    noise_decay: float = 0.9
    invalid_threshold: float = 0.1
    timeout: float = 7200.0
    heartbeat_timeout: float = 30.0
    exchange: str = "file"  # file: <session>/exchange on a shared filesystem; dist: torch.distributed

    @property
    def uses_ring(self):
        return self.source == "external" and self.num > 1


class GraftHook:
    """The end-of-epoch graft: publish, receive the predecessor's weights, graft; or a scion of its own."""

    def __init__(self, model, settings, exchange=None):
        self.model = model
        self.settings = settings
        self.exchange = exchange
        self.grafter = Grafter(model, settings.a, settings.c, settings.criterion, settings.level)

    def __call__(self, epoch):
        start = time.perf_counter()
        s = self.settings
        if s.source == "noise":
            entry = {"source": "noise", "layers": graft_noise(self.model, s.noise_decay ** epoch, s.invalid_threshold)}
        elif s.source == "internal":
            entry = {"source": "internal", "layers": graft_internal(self.model, s.invalid_threshold, s.a, s.c)}
        else:
            own = self.model.state_dict()
            self.exchange.publish(epoch, own)
            receiving = time.perf_counter()
            peer = self.exchange.receive(epoch, own)
            waited = time.perf_counter() - receiving
            entry = {"peer": self.exchange.peer, "level": s.level, "layers": self.grafter.graft(peer)}
            entry["wait_time"] = waited
        entry["time"] = time.perf_counter() - start
        return {"graft": entry}


def _raise_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def _reason(err):
    if isinstance(err, UserError):
        return str(err)
    if isinstance(err, KeyboardInterrupt):
        return "interrupted"
    if isinstance(err, SystemExit):
        return f"terminated (exit {err.code})"
    return f"{type(err).__name__}: {err}"


@contextlib.contextmanager
def failures_announced(args):
    """Around a whole ring network's script (flags --s, --i, --num, --exchange): an error before the ring
    starts (bad data, a refused resume) still leaves net<i>.failed, so the peers stop at once instead of
    waiting for a network that never comes. The dist exchange has no files; torchrun reports its ranks."""
    try:
        yield
    except BaseException as err:
        if args.num > 1 and getattr(args, "exchange", "file") == "file" and not isinstance(err, SystemExit):
            announce_failure(Path(args.s) / "exchange", args.i, _reason(err))
        raise


def run_network(trainer, settings, resume=False, arch=None):
    """Train `trainer`'s network as network `settings.index` of the session, grafting every epoch when
    the session has peers or a scion source; any failure is logged and announced to the peers."""
    session = trainer.session
    if resume:
        trainer.resume()
    grafting = settings.uses_ring or settings.source != "external"
    exchange = None
    if settings.uses_ring:
        ring = dict(arch=arch, timeout=settings.timeout, heartbeat_timeout=settings.heartbeat_timeout,
                    device=trainer.device, log=session.log)
        if settings.exchange == "dist":
            exchange = DistRingExchange(settings.index, settings.num, **ring)
        else:
            exchange = RingExchange(session.root / "exchange", settings.index, settings.num, **ring)
        trainer.check_abort = exchange.check
        exchange.start()
        session.log(f"network {settings.index}/{settings.num} grafts from network {exchange.peer} "
                    f"({settings.level} level, {settings.criterion}, A={settings.a}, c={settings.c})")
    previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        trainer.fit(GraftHook(trainer.model, settings, exchange) if grafting else None)
    except BaseException as err:
        session.log(f"error: {_reason(err)}", console=False)
        if not isinstance(err, (UserError, KeyboardInterrupt, SystemExit)):
            session.log(traceback.format_exc(), console=False)
        if exchange is not None:
            exchange.close(error=_reason(err))
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    if exchange is not None:
        exchange.close()
    session.log(f"network {settings.index} finished: best test accuracy {trainer.best_acc:.2f}%")
    session.close()
    return trainer.best_acc
