"""The ring, or a contiguous part of it, in one process on one device (--pack).

Each member is the network that `--i i` would train alone: its Trainer is built by the same call, so it has
its own initialisation (seed + i), loader generator, learning rate, optimizer, BatchNorm statistics and
session files, and the global random generators are switched to its own state whenever it runs. The
members step in lockstep, one batch each in turn; the pack's loss is Σ_i L_i(θ_i), whose gradient with
respect to θ_i is ∂L_i/∂θ_i, so each member backpropagates its own loss. At the end of every epoch all
members publish their pre-graft weights, then each grafts from its predecessor with the GraftHook of a
separate process: in memory inside the pack, through the session's ring (files or torch.distributed) at
its boundary. The members' last checkpoints are committed together, so that a resume finds them all at
one epoch.
"""
import contextlib
import ctypes
import dataclasses
import json
import os
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

import torch
from torch.nn.modules.dropout import _DropoutNd

from .checkpoint import atomic_save
from .data import TensorLoader
from .engine import is_out_of_memory
from .errors import UserError
from .ring import open_ring, torchrun_rank, uses_ring
from .rng import rng_state, set_rng_state
from .runner import GraftHook, _reason, graft_line, log_failure, run_network
from .session import exchange_dir, exchange_weights, network_files, pack_commit, pending


def contiguous_share(num, parts, part):
    """Networks of share `part` (0-based) when networks 1..num are split into `parts` contiguous shares
    whose sizes differ by at most one."""
    size, larger = divmod(num, parts)
    first = part * size + min(part, larger) + 1
    return list(range(first, first + size + (part < larger)))


def pack_members(record, members):
    """The networks of this process under --pack: `members` ("FIRST-LAST"), by default all 1..num, or with
    --exchange dist this torchrun rank's contiguous share of the ring."""
    if record.exchange == "dist":
        if members is not None:
            raise UserError("--members with --exchange dist: each torchrun process trains its rank's share of "
                            "the ring; drop --members")
        rank, world = torchrun_rank()
        if world < 2:
            raise UserError("--pack --exchange dist with one process: the pack needs no exchange; use "
                            "--exchange file, or start several packs with torchrun --nproc_per_node=G")
        if world > record.num:
            raise UserError(f"--pack: {world} torchrun processes for --num {record.num} networks; start at "
                            f"most {record.num}")
        return contiguous_share(record.num, world, rank)
    if members is None:
        return list(range(1, record.num + 1))
    first, sep, last = members.partition("-")
    try:
        first, last = int(first), int(last if sep else first)
    except ValueError:
        raise UserError(f"--members {members}: give FIRST-LAST, e.g. 1-4") from None
    if not 1 <= first <= last <= record.num:
        raise UserError(f"--members {members}: networks must lie within 1..--num ({record.num}), first ≤ last")
    return list(range(first, last + 1))


class Member:
    """One network of the pack: its run record, its Trainer, and the global random generators' state of
    its own process (taken right after its Trainer was built, as separate process i would have it)."""

    def __init__(self, record, trainer):
        self.record = record
        self.trainer = trainer
        self.session = trainer.session
        self.rng = rng_state()
        self.hook = None
        self.outer = None  # its exchange through the session's ring, when the pack is not the whole ring

    @contextlib.contextmanager
    def running(self):
        """The global generators switched to this member's state for the block, and kept after it."""
        set_rng_state(self.rng)
        try:
            yield
        finally:
            self.rng = rng_state()


class MemberExchange:
    """A member's exchange, with RingExchange's publish / receive / peer: every member's pre-graft weights go
    into `offered` (a dict shared by the pack: index -> state dict), where a successor in the pack takes
    them; to and from networks outside the pack they go through `outer`."""

    def __init__(self, index, num, offered, inside, outer=None):
        self.index = index
        self.peer = num if index == 1 else index - 1
        self.successor = index % num + 1
        self.offered = offered
        self.inside = inside
        self.outer = outer

    def publish(self, epoch, state_dict):
        # a copy: the member grafts its own weights in place before the successor reads them
        self.offered[self.index] = {k: v.detach().clone() for k, v in state_dict.items()}
        if self.successor not in self.inside:
            self.outer.publish(epoch, state_dict)

    def receive(self, epoch, reference):
        if self.peer in self.inside:
            return self.offered[self.peer]
        return self.outer.receive(epoch, reference)


def commit_last(root, members, records):
    """Write every member's last checkpoint (with its metrics record of the epoch) beside its place, mark
    the pack's epoch complete, then move them into place: a kill at any moment leaves all members at the
    earlier epoch or all at this one."""
    epoch = records[0]["epoch"]
    marker = pack_commit(root, members[0].record.index, members[-1].record.index)
    for member, record in zip(members, records):
        with member.running():
            state = member.trainer.last_checkpoint(epoch, record)
        atomic_save(state, pending(member.session.last_path))
    tmp = marker.with_name(f"{marker.name}.tmp")
    tmp.write_text(json.dumps({"epoch": epoch}))
    os.replace(tmp, marker)
    finish_commit(marker, [m.session.last_path for m in members])


def finish_commit(marker, last_paths):
    """Move the pending last checkpoints of a marked commit into place and drop the marker."""
    for path in last_paths:
        if pending(path).exists():
            os.replace(pending(path), path)
    marker.unlink()


def recover_commit(record, members):
    """Before a packed --resume: finish a commit a kill interrupted after its marker, or discard the
    pending checkpoints of one it interrupted before (those members stay at the earlier epoch)."""
    root = record.session_dir
    paths = [os.path.join(root, network_files(i).last) for i in members]
    marker = pack_commit(root, members[0], members[-1])
    if marker.exists():
        finish_commit(marker, paths)
    for path in paths:
        pending(path).unlink(missing_ok=True)


def _start_epoch(members):
    starts = {m.record.index: m.trainer.start_epoch for m in members}
    if len(set(starts.values())) > 1:
        where = ", ".join(f"network {i} at epoch {e - 1}" for i, e in starts.items())
        raise UserError(f"--resume: the pack's networks stopped at different epochs ({where}); a pack resumes "
                        f"them together, from one epoch: resume them as separate processes (--i) instead")
    return next(iter(starts.values()))


def _train_together(members, epoch, records):
    """One epoch of every member, a batch of each in turn, then its evaluation, into `records`."""
    passes, batches = [], []
    for m in members:
        with m.running():
            passes.append(m.trainer.train_pass(epoch))
            batches.append(iter(m.trainer.train_loader))
    for _ in range(passes[0].batches):
        for m, training, loader in zip(members, passes, batches):
            with m.running():
                training.step(*next(loader))
    for m, training, record in zip(members, passes, records):
        with m.running():  # a test DataLoader draws its base seed from the global generator
            record.update(training.result())
            m.trainer.evaluate_epoch(record)


class _Stopped(Exception):
    """A member's thread stops because another member failed."""


def _train_in_threads(members, epoch, records):
    """One epoch of every member and its evaluation, into `records`, each member in a thread of its own (as
    N processes would share the cores; members that draw nothing from the global generators only)."""
    stop = threading.Event()

    def epoch_of(member, record):
        training = member.trainer.train_pass(epoch)
        for inputs, targets in member.trainer.train_loader:
            if stop.is_set():
                raise _Stopped()
            training.step(inputs, targets)
        record.update(training.result())
        member.trainer.evaluate_epoch(record)

    pool = ThreadPoolExecutor(len(members), thread_name_prefix="pack-member")
    try:
        futures = [pool.submit(epoch_of, m, record) for m, record in zip(members, records)]
        wait(futures, return_when=FIRST_EXCEPTION)
        stop.set()
        errors = [f.exception() for f in futures if f.exception() is not None]
        failure = next((e for e in errors if not isinstance(e, _Stopped)), None)
        if failure is not None:
            raise failure
    finally:
        stop.set()
        pool.shutdown(wait=True)


M_ARENA_MAX = -8  # glibc's mallopt option


def one_malloc_arena():
    """Have glibc's malloc serve every thread from its main heap, as MALLOC_ARENA_MAX=1 does (which the
    launchers also set for a pack: this call only binds threads that have not allocated yet). A member's
    thread would otherwise get an arena of its own, made of 64 MB heaps that activations above malloc's
    mapping threshold (32 MB: MobileNetV2 at batch 128) bypass: mapped and unmapped every step, and each
    unmap stalls the other threads' page faults. MobileNetV2, two members on this project's CPU: epochs of
    6.3-7.0 s without MALLOC_ARENA_MAX=1, 3.7-5.0 s with it. Nothing happens without glibc."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, 1)
    except (OSError, AttributeError):
        pass


def in_threads(members):
    """Whether the members can train in threads of their own: on the CPU, more than one, and nothing in
    their training draws from the global generators, which the threads share (the tensor pipeline; no
    dropout) or compiles (torch.compile is not for several threads at once)."""
    def draws_nothing(m):
        t = m.trainer
        stochastic = any(isinstance(x, _DropoutNd) and x.p > 0 for x in t.model.modules())
        return isinstance(t.train_loader, TensorLoader) and not stochastic and t.forward is t.model
    return len(members) > 1 and members[0].trainer.device.type == "cpu" and all(map(draws_nothing, members))


def _graft(members, epoch):
    """Every member publishes its pre-graft weights, then each grafts from its predecessor."""
    for m in members:
        with m.running():
            m.hook.publish(epoch)
    results = []
    for m in members:
        with m.running():
            results.append(m.hook.complete(epoch))
    return results


def _write_final_exchange(members, offered, epoch):
    """The final epoch's exchange files (SPEC §7) that the ring's files did not already leave."""
    directory = exchange_dir(members[0].record.session_dir)
    directory.mkdir(exist_ok=True)
    for m in members:
        path = exchange_weights(directory, m.record.index, epoch)
        if not path.exists():
            atomic_save({"net": offered[m.record.index], "epoch": epoch, "arch": m.record.arch}, path)


def fit_pack(members, offered, threaded=False):
    """Train every member from their common start epoch to the last, as Trainer.fit does for one network:
    in lockstep, or with `threaded` each member's epoch in a thread of its own (in_threads)."""
    first = _start_epoch(members)
    epochs = members[0].trainer.epochs
    if first == 1:
        for m in members:
            m.session.sync_metrics(0)
    for epoch in range(first, epochs + 1):
        start = time.perf_counter()
        records = [{"epoch": epoch, "lr": m.trainer.lr} for m in members]
        (_train_in_threads if threaded else _train_together)(members, epoch, records)
        if members[0].hook is not None:
            for record, result in zip(records, _graft(members, epoch)):
                record.update(result)
            if epoch == epochs:
                _write_final_exchange(members, offered, epoch)
        seconds = time.perf_counter() - start
        for m, record in zip(members, records):
            m.trainer.end_epoch(record, seconds)
        commit_last(members[0].record.session_dir, members, records)
        for m, record in zip(members, records):
            with m.running():
                m.trainer.record_epoch(record)


def _connect(members, record):
    """Give every member its GraftHook and exchange; returns the pack's exchanges through the session's
    ring (none when the pack is the whole ring) and the dict its members publish into."""
    inside = {m.record.index for m in members}
    offered, outers = {}, []
    ring = uses_ring(record)
    settings = dict(arch=record.arch, device=members[0].trainer.device)
    if ring and len(inside) < record.num:
        if record.exchange == "dist":
            # torchrun's ring is one of processes: rank r + 1 of WORLD_SIZE, each a pack
            rank, world = torchrun_rank()
            shared = open_ring(dataclasses.replace(record, index=rank + 1, num=world), log=members[0].session.log,
                               **settings)
            outers = [shared]
            for m in members:
                m.outer = shared
        else:
            # every member keeps its heartbeat and markers: the other packs watch each network of the ring
            for m in members:
                m.outer = open_ring(m.record, log=m.session.log, **settings)
                outers.append(m.outer)

    def check_ring():
        for outer in outers:
            outer.check()

    for m in members:
        exchange = MemberExchange(m.record.index, record.num, offered, inside, m.outer) if ring else None
        if ring or record.source != "external":
            evaluate = m.trainer.evaluate if record.eval_grafted else None
            m.hook = GraftHook(m.trainer.model, m.record, exchange, evaluate)
        if exchange is not None:
            m.session.log(graft_line(m.record, exchange.peer, m.hook.grafter))
        if outers:
            m.trainer.check_abort = check_ring
    return outers, offered


def _out_of_memory(record, members):
    device = members[0].trainer.device if members else record.device or "the device"
    return UserError(f"out of memory on {device} with {len(record.pack)} networks in one process (--pack) at "
                     f"batch size {record.batch_size}: lower the networks per process (--members, or more devices "
                     f"in GPUS, one pack each) or --batch-size")


def run_pack(record, build):
    """Train networks record.pack of the session together in this process: `build(member_record)` makes
    each member's Trainer as for a separate process (assembly.cifar_trainer); any failure is logged in
    every member's log and announced to the ring."""
    records = [dataclasses.replace(record, index=i) for i in record.pack]
    members, outers = [], []
    one_malloc_arena()
    try:
        if record.resume:
            recover_commit(record, record.pack)
        for member_record in records:
            members.append(Member(member_record, build(member_record)))
            members[-1].session.label_console(f"[{member_record.index}] ")
        outers, offered = _connect(members, record)
        span = f"{record.pack[0]}..{record.pack[-1]}" if len(record.pack) > 1 else f"{record.pack[0]}"
        threaded = in_threads(members)
        if threaded:
            # each member's thread takes its share of the cores, as launch_lib.sh gives one process each
            torch.set_num_threads(max(1, torch.get_num_threads() // len(members)))
        how = f"a thread each, {torch.get_num_threads()} torch thread(s) per thread" if threaded else "in lockstep"
        for m in members:
            m.session.log(f"packed: networks {span} of {record.num} train in this process (pid {os.getpid()}) "
                          f"on {m.trainer.device}, {how}")
        fit_pack(members, offered, threaded)
    except BaseException as err:
        stop = _out_of_memory(record, members) if is_out_of_memory(err) else err
        reason = _reason(stop)
        for m in members:
            log_failure(m.session, stop)
        for outer in outers:
            outer.close(error=reason)
        if stop is err:
            raise
        raise stop from None
    for outer in outers:
        outer.close()
    for m in members:
        m.session.log(f"network {m.record.index} finished: best test accuracy {m.trainer.best_acc:.2f}%")
        m.session.close()
    return [m.trainer.best_acc for m in members]


def run_networks(record, build):
    """This process's networks of the session: the pack record.pack (--pack), or network record.index
    alone, `build(record)` making a network's Trainer."""
    if record.pack:
        return run_pack(record, build)
    return run_network(build(record), record)
