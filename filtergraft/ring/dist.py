"""The ring exchange over torch.distributed, for networks started by torchrun (no shared filesystem needed).

Same interface as files.RingExchange. Network i = RANK + 1 sends its pre-graft weights to network i + 1
and receives network i − 1's in one point-to-point transfer of one flat buffer (NCCL on GPUs, gloo on the
CPU). torchrun's store (the TCP key-value store every worker can reach) carries the rest:

    header/<i>    the weights network i offers: epoch, arch, number of values, a hash of names/shapes/dtypes
    accepted/<i>  the last epoch whose header from network i − 1 network i checked and accepted
    beat/<i>      network i's heartbeat counter;  pid/<i>: its pid and host
    events        one JSON line per network that finished ("done") or failed ("failed", with the reason)

A transfer starts only once both neighbours have checked each other's header, so the blocking wait on
it lasts as long as the copy itself, and every other wait is a bounded poll that watches the peers.
"""
import hashlib
import json
import os
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from ..errors import UserError
from .base import PeerWatch, RingMember, where

POLL_SECONDS = 0.005
STORE_TIMEOUT = 30.0


def torchrun_rank():
    """(rank, world size) from the torchrun environment; a UserError when it is not there."""
    try:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    except (KeyError, ValueError):
        raise UserError("--exchange dist needs the torchrun environment (RANK, WORLD_SIZE): start the networks "
                        "with torchrun --nproc_per_node=N -- SCRIPT --exchange dist --num N ..., or with "
                        "EXCHANGE=dist in the launch scripts") from None


def torchrun_store():
    """A new client of torchrun's store (the TCP key-value store every worker reaches at MASTER_ADDR:MASTER_PORT),
    with this run's keys under a prefix of their own."""
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                          timeout=timedelta(seconds=STORE_TIMEOUT))
    prefix = (f"filtergraft/{os.environ.get('TORCHELASTIC_RUN_ID', 'run')}/"
              f"{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/")
    return dist.PrefixStore(prefix, store)


def use_local_gpu(record):
    """With several GPUs visible and no --device, a torchrun worker takes GPU LOCAL_RANK (modulo their count)."""
    count = torch.cuda.device_count()
    if record.device is None and count > 1:
        record.device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0)) % count}"


def floating_items(state):
    """The (name, tensor) pairs of a state dict that grafting mixes: the floating-point ones."""
    return [(k, t) for k, t in state.items() if torch.is_tensor(t) and t.is_floating_point()]


def layout_of(state, arch=None):
    """A short hash of every tensor's name, shape and dtype (and the architecture name): equal layouts,
    equal hashes."""
    text = "\n".join(f"{k}:{tuple(t.shape)}:{t.dtype}" for k, t in state.items()) + f"\narch:{arch}"
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def buffer_dtype(state):
    """The one dtype every floating tensor of `state` converts to and back from losslessly."""
    dtypes = {t.dtype for _, t in floating_items(state)}
    result = dtypes.pop()
    for dtype in dtypes:
        result = torch.promote_types(result, dtype)
    return result


def flatten(state, device, out=None):
    """All floating tensors of `state`, in order, as one contiguous 1-D buffer on `device`, written into
    `out` when given (reusing one buffer every epoch spares touching fresh memory, which costs more than the copy)."""
    dtype = buffer_dtype(state)
    return torch.cat([t.detach().reshape(-1).to(device, dtype) for _, t in floating_items(state)], out=out)


def reusable(buffer, numel, dtype, device):
    """`buffer` when it has this size, dtype and device, else a new empty one."""
    if buffer is not None and (buffer.numel(), buffer.dtype, buffer.device) == (numel, dtype, device):
        return buffer
    return torch.empty(numel, dtype=dtype, device=device)


def unflatten(flat, reference):
    """A state dict shaped like `reference` whose floating tensors are consecutive slices of `flat`;
    the other entries (num_batches_tracked) are the reference's own, since grafting never mixes them."""
    state, offset = {}, 0
    for key, ref in reference.items():
        if torch.is_tensor(ref) and ref.is_floating_point():
            n = ref.numel()
            state[key] = flat[offset:offset + n].view(ref.shape).to(ref.dtype)
            offset += n
        else:
            state[key] = ref
    return state


def header(epoch, state, arch=None):
    """What a network offers before the transfer: epoch, architecture, number of values and layout hash."""
    return {"epoch": epoch, "arch": arch, "numel": sum(t.numel() for _, t in floating_items(state)),
            "layout": layout_of(state, arch)}


def refusal(theirs, mine, peer, index):
    """A one-line reason why network `peer`'s header `theirs` does not fit network `index`'s `mine`, or None."""
    if theirs["epoch"] != mine["epoch"]:
        return (f"network {peer} is at epoch {theirs['epoch']} but network {index} at epoch {mine['epoch']}: their "
                f"last_<i>.t7 are from different epochs (one stopped between the exchange and its save), and "
                f"this exchange keeps no weights to replay an epoch; start a new session")
    if theirs["arch"] != mine["arch"]:
        return (f"network {peer} runs {theirs['arch']!r} but network {index} runs {mine['arch']!r}; every network "
                f"of a session must run the same model")
    if theirs["layout"] != mine["layout"]:
        return (f"network {peer}'s weights ({theirs['numel']:,} values) do not fit network {index}'s "
                f"({mine['numel']:,} values; names or shapes differ); every network must build the same model")
    return None


class DistRingExchange(RingMember):
    """The ring over torch.distributed; network `index` is RANK + 1 of WORLD_SIZE."""

    # a store round trip is cheap and the peer is usually close behind: poll at a steady pace
    POLL_DELAYS = (POLL_SECONDS, POLL_SECONDS)

    def __init__(self, index, num, ranks_per_network=1, **settings):
        super().__init__(index, num, **settings)
        self._ranks_per_network = ranks_per_network
        self._address = None
        self._store = None
        self._watch_store = None
        self._peers = {}
        self._watches = {}
        self._owns_group = False
        self._send = None
        self._received = None

    @classmethod
    def for_record(cls, record, **settings):
        """Network record.index's member; with several ranks per network (parallel.py), its leader's."""
        return cls(record.index, record.num, ranks_per_network=record.network_ranks, **settings)

    def _rank_of(self, index):
        """The torchrun rank of network `index`'s leader (its ranks are consecutive, parallel.RankLayout)."""
        return (index - 1) * self._ranks_per_network

    @classmethod
    def place(cls, record):
        """Number network `record` as torchrun does: rank r is network r + 1 of WORLD_SIZE; with several
        visible GPUs and no device of its own, rank r uses GPU LOCAL_RANK."""
        rank, world = torchrun_rank()
        if record.num != world:
            raise UserError(f"--num {record.num} does not match the {world} processes torchrun started "
                            f"(WORLD_SIZE); pass --num {world}")
        record.index, record.num = rank + 1, world
        use_local_gpu(record)

    # -- the store ---------------------------------------------------------------------------------

    def _events(self, store):
        return [json.loads(line) for line in store.get("events").decode().splitlines() if line]

    def _announce(self, kind, **fields):
        """Append a done/failed event for this network (best effort: the store may be gone)."""
        try:
            self._store.append("events", json.dumps({"index": self.index, "kind": kind, **fields}) + "\n")
        except (RuntimeError, OSError):
            pass

    # -- start ---------------------------------------------------------------------------------------

    def start(self):
        """Join torchrun's store, wait (bounded) until every network has, then set up the process group."""
        rank, world = torchrun_rank()
        if (rank, world) != (self._rank_of(self.index), self.num * self._ranks_per_network):
            raise self._error(f"network {self.index} of {self.num} runs as torchrun rank {rank} of {world}; "
                              f"with --exchange dist, --i is RANK + 1 and --num is WORLD_SIZE (with M ranks per "
                              f"network, RANK / M + 1 and WORLD_SIZE / M)")
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
            raise UserError("--exchange dist shares torchrun's store between the networks; start them with "
                            "torchrun (static or c10d rendezvous), not by setting RANK/WORLD_SIZE by hand")
        self._address = (os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]))
        try:
            self._store = torchrun_store()
        except (RuntimeError, ValueError) as err:
            raise self._error(f"network {self.index} cannot reach torchrun's store at {self._where()} "
                              f"({_first_line(err)})") from None
        me = self.index
        self._store.set(f"pid/{me}", json.dumps({"pid": os.getpid(), "host": self.host}))
        self._store.set(f"header/{me}", "null")
        self._store.set(f"accepted/{me}", "0")
        self._store.add(f"beat/{me}", 1)
        self._store.append("events", "")
        self._store.add("started", 1)
        self._wait_for_everyone()
        others = self.others()
        infos = self._store.multi_get([f"pid/{j}" for j in others])
        self._peers = {j: json.loads(info) for j, info in zip(others, infos)}
        if not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            if backend == "nccl":
                torch.cuda.set_device(self.device)
            dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world,
                                    timeout=timedelta(seconds=self.timeout))
            self._owns_group = True
        if "nccl" in dist.get_backend() and self.device.type == "cuda":
            self._comm_device = torch.device("cuda", self.device.index if self.device.index is not None
                                             else torch.cuda.current_device())
        else:
            self._comm_device = torch.device("cpu")
        self._start_watching("dist-ring-watch")
        return self

    def _wait_for_everyone(self):
        deadline = time.monotonic() + self.startup_timeout
        while int(self._store.add("started", 0)) < self.num:
            failure = self._failed_event(self._events(self._store))
            if failure is not None:
                raise self._error(f"network {self.index} stops: {failure}")
            if time.monotonic() > deadline:
                missing = [str(j) for j in range(1, self.num + 1) if not self._store.check([f"pid/{j}"])]
                raise self._error(f"network {self.index} stops: network(s) {', '.join(missing)} did not start "
                                  f"within {self.startup_timeout:.0f}s; see their logs")
            time.sleep(POLL_SECONDS * 10)

    # -- watching the peers -------------------------------------------------------------------------

    def _where(self):
        return f"{self._address[0]}:{self._address[1]}"

    def _failed_event(self, events):
        """The first failure another network announced, preferring one that was not a stop from outside
        (torchrun's SIGTERM to the others once one fails)."""
        failed = sorted((e for e in events if e["kind"] == "failed" and e["index"] != self.index),
                        key=lambda e: e["outside"])
        return f"network {failed[0]['index']} failed: {failed[0]['reason']}" if failed else None

    def _find_failure(self, store, watches):
        """A one-line reason when another network failed, died or went silent, else None. A network that
        died without a word comes first: it is the cause, and those stopped because of it speak after it.
        `watches` maps each other network to its PeerWatch, whose heartbeat is its beat/<j> counter."""
        events = self._events(store)
        spoke = {event["index"] for event in events}
        now = time.monotonic()
        for j, watch in watches.items():
            if j in spoke:
                continue
            watch.beat(int(store.add(f"beat/{j}", 0)), now)
            if self.local_liveness(watch.info) is False:
                return self.stopped(j, watch.info)
            silent = watch.silent(now)
            if silent > self.heartbeat_timeout:
                return f"network {j} ({where(watch.info)}) sent no heartbeat for {silent:.0f}s"
        return self._failed_event(events)

    def _new_watches(self):
        return {j: PeerWatch(j, info) for j, info in self._peers.items()}

    def _watch_loop(self):
        """Watch through a store client of the watcher's own (the main thread's may be in a call)."""
        try:
            self._watch_store = torchrun_store()
        except (RuntimeError, ValueError) as err:
            self._failure = f"lost torchrun's store at {self._where()} ({_first_line(err)})"
            return
        self._watches = self._new_watches()
        super()._watch_loop()

    def _watch_once(self):
        try:
            self._watch_store.add(f"beat/{self.index}", 1)
            return self._find_failure(self._watch_store, self._watches)
        except (RuntimeError, ValueError) as err:
            return f"lost torchrun's store at {self._where()} ({_first_line(err)}): its launcher stopped"

    def _poll(self, key, ready, deadline, what):
        """The JSON value under `key` once ready(value), within the bounded wait."""
        return self.wait_for(what, lambda: json.loads(self._store.get(key)), ready, deadline)

    # -- the exchange --------------------------------------------------------------------------------

    def publish(self, epoch, state_dict):
        """Offer this network's pre-graft weights of `epoch` to its successor (flattened into one buffer)."""
        self.check()
        numel = sum(t.numel() for _, t in floating_items(state_dict))
        self._send = reusable(self._send, numel, buffer_dtype(state_dict), self._comm_device)
        flatten(state_dict, self._comm_device, out=self._send)
        self._store.set(f"header/{self.index}", json.dumps(header(epoch, state_dict, self.arch)))

    def receive(self, epoch, reference):
        """The predecessor's pre-graft weights of `epoch` as a state dict shaped like `reference`, after
        both neighbours checked the headers; the one transfer sends ours and receives theirs together.
        Its tensors are views of a buffer that the next receive() overwrites."""
        deadline = time.monotonic() + self.timeout
        mine = header(epoch, reference, self.arch)
        theirs = self._poll(f"header/{self.peer}", lambda h: h is not None and h["epoch"] >= epoch, deadline,
                            f"network {self.peer}'s weights of epoch {epoch}")
        reason = refusal(theirs, mine, self.peer, self.index)
        if reason is not None:
            raise self._error(reason)
        self._store.set(f"accepted/{self.index}", str(epoch))
        self._poll(f"accepted/{self.successor}", lambda e: e >= epoch, deadline,
                   f"network {self.successor} to take the weights of epoch {epoch}")
        self._received = reusable(self._received, mine["numel"], self._send.dtype, self._comm_device)
        works = dist.batch_isend_irecv([dist.P2POp(dist.isend, self._send, self._rank_of(self.successor)),
                                        dist.P2POp(dist.irecv, self._received, self._rank_of(self.peer))])
        try:
            for work in works:
                work.wait(timedelta(seconds=max(deadline - time.monotonic(), 1.0)))
        except RuntimeError as err:
            culprit = self._failure or self._look_for_failure()
            raise self._error(f"network {self.index} stops: the transfer with networks {self.peer} and "
                              f"{self.successor} broke ({culprit or _first_line(err)})") from None
        return unflatten(self._received, reference)

    def _look_for_failure(self):
        """One fresh look for a failed or vanished peer (the watcher's view may be half a second old)."""
        try:
            return self._find_failure(self._store, self._new_watches())
        except (RuntimeError, ValueError):
            return None

    def close(self, error=None):
        """Stop watching, announce done or failed (with the reason) to the peers, and release the group;
        returns the line that names the network that failed first, when this one learnt it (else None).

        A network stopped from outside (the runner calls this while handling SystemExit from torchrun's
        SIGTERM, which torchrun sends to the others once one fails) names the network that failed first;
        after a Ctrl-C (KeyboardInterrupt) there is nothing to name."""
        self._stop_watching()
        culprit = None
        if self._store is None:
            return culprit
        if error is None:
            self._announce("done")
        else:
            stop = sys.exc_info()[1]
            said = self._gave_up or isinstance(stop, KeyboardInterrupt)
            culprit = None if said else self._failure or self._look_for_failure()
            self._announce("failed", reason=error, outside=isinstance(stop, (KeyboardInterrupt, SystemExit)))
            if culprit is not None:
                culprit = f"network {self.index} stops: {culprit}"
                self.log(culprit)
        if self._owns_group and error is None:
            dist.destroy_process_group()
        return culprit


def _first_line(err):
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
