"""The ring between the networks of a grafting session, and the one place that chooses its backend from
a run record's `exchange`: files in <session>/exchange (one shared filesystem) or torch.distributed (the
networks started by torchrun). Everything else asks this module, never a backend by name."""
from ..errors import UserError
from .dist import DistRingExchange, torchrun_rank  # noqa: F401 (torchrun's numbering, for packs)
from .files import RingExchange

EXCHANGES = ("file", "dist")
_BACKENDS = dict(zip(EXCHANGES, (RingExchange, DistRingExchange)))


def _backend(record):
    """The backend class of `record` (a record.RunRecord); a record without an exchange uses files."""
    name = record.exchange or EXCHANGES[0]
    try:
        return _BACKENDS[name]
    except KeyError:
        raise UserError(f"--exchange must be one of {', '.join(EXCHANGES)}, not {name!r}") from None


def uses_ring(record):
    """Whether the run grafts from its peers: several networks, and the peer as the scion."""
    return record.num > 1 and record.source == "external"


def place_in_ring(record):
    """Set record.index and record.num (and record.device, for one GPU per network) the way the backend
    numbers the networks: under torchrun from RANK and WORLD_SIZE; with files as the flags said."""
    _backend(record).place(record)


def open_ring(record, *, arch, device, log):
    """The started exchange of network record.index when the run uses the ring, else None. `arch` names
    the model (peers running another are refused), `device` receives the peer's weights, `log(line)`."""
    if not uses_ring(record):
        return None
    settings = dict(arch=arch, timeout=record.graft_timeout, heartbeat_timeout=record.heartbeat_timeout,
                    device=device, log=log)
    return _backend(record).for_record(record, **settings).start()


def announce_start(record):
    """Show network record.index alive to its peers from now on, when the run uses the ring: what the
    caller stops when the process ends (an object with stop()), or None."""
    return _backend(record).announce_start(record) if uses_ring(record) else None


def announce_failure(record, reason):
    """Leave what the other networks of the session need to stop at once when this one dies before or
    outside the ring (a refused flag, bad data, a resume that fails): with files, net<i>.failed."""
    if record.num > 1:
        _backend(record).announce_failure(record, reason)
