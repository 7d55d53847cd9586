"""One network over several ranks: N networks × M ranks under torchrun, each network data-parallel
(DistributedDataParallel) inside a process group of its own.

Rank r of a world of N·M is rank r mod M of network r div M + 1: a network's ranks are consecutive, and
torchrun numbers the ranks of a node consecutively, so a network stays on one node whenever M divides the
node's process count. Rank 0 of a network is its leader: it alone exchanges with the peer network, grafts,
writes the session's files, and broadcasts the grafted weights to the network's other ranks.

Every rank of a network draws the same batches of the same epoch order (the network's generator), and rank
k trains on the k-th of M equal parts of each batch: M ranks at batch B take the steps one process takes at
batch B. Evaluation shards the test set the same way, and the sums are reduced, so each network's accuracy
is computed once over the whole test set.
"""
import json
import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn as nn

from .errors import UserError
from .ring.base import pid_alive, where
from .ring.dist import (buffer_dtype, flatten, floating_items, reusable, torchrun_rank, torchrun_store, unflatten,
                        use_local_gpu)


def torchrun_world():
    """(rank, world size) when this process is a torchrun worker, else None."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    return torchrun_rank()


@dataclass(frozen=True)
class RankLayout:
    """Networks 1..num, `size` consecutive ranks each: network i holds ranks (i − 1)·size .. i·size − 1."""

    num: int
    size: int

    @classmethod
    def of_world(cls, world, num, size=None):
        """The layout of `num` networks over `world` ranks (`size` each: world / num when not given)."""
        if size is None:
            if world % num:
                raise UserError(f"--num {num} does not match the {world} processes torchrun started (WORLD_SIZE): "
                                f"pass --num {world} for one rank per network, or start a multiple of {num} "
                                f"processes (N networks × M ranks)")
            size = world // num
        if num * size != world:
            raise UserError(f"--num {num} networks × --ranks-per-network {size} = {num * size} ranks, but "
                            f"torchrun started {world} (WORLD_SIZE); start {num * size}, or change --num")
        return cls(num, size)

    def network(self, rank):
        return rank // self.size + 1

    def local(self, rank):
        return rank % self.size

    def leader(self, index):
        return (index - 1) * self.size

    def ranks(self, index):
        return list(range(self.leader(index), self.leader(index) + self.size))

    def split_networks(self, node_size):
        """The networks whose ranks fall on more than one node of `node_size` processes."""
        return [i for i in range(1, self.num + 1)
                if self.leader(i) // node_size != (self.leader(i) + self.size - 1) // node_size]


def place_ranks(record):
    """Under torchrun with M > 1 ranks per network (--ranks-per-network, else WORLD_SIZE / --num): set
    record.index (the network), record.rank (its rank in it) and record.ranks_per_network, and the GPU
    LOCAL_RANK when several are visible. True when it placed the run, False for one rank per network."""
    world = torchrun_world()
    if world is None:
        if record.network_ranks > 1:
            raise UserError(f"--ranks-per-network {record.ranks_per_network} trains each network on several "
                            f"processes: start them with torchrun (RANKS_PER_NETWORK in the launch scripts)")
        return False
    rank, world_size = world
    if record.pack:
        if record.network_ranks > 1:
            raise UserError("--pack trains several networks in one process and --ranks-per-network one network in "
                            "several; use one of them")
        return False
    layout = RankLayout.of_world(world_size, record.num, record.ranks_per_network)
    if layout.size == 1:
        return False
    if record.index is not None and record.index != layout.network(rank):
        raise UserError(f"--i {record.index}: under torchrun rank {rank} trains network {layout.network(rank)} "
                        f"({layout.size} ranks each); drop --i")
    record.index, record.rank, record.ranks_per_network = layout.network(rank), layout.local(rank), layout.size
    use_local_gpu(record)
    return True


def check_batch(batch_size, ranks):
    """Refuse a network batch (-b, shared by its ranks) that does not split evenly over them."""
    if batch_size % ranks:
        raise UserError(f"-b {batch_size} is the network's batch, split over its {ranks} ranks; use a multiple "
                        f"of {ranks}")


class SumOverRanks(torch.autograd.Function):
    """y = Σ_ranks x, on every rank; the gradient of x is Σ_ranks ∂L/∂y, since every rank's loss reads y.
    (torch.distributed.nn.functional.all_reduce does the same and is deprecated for a private module.)"""

    @staticmethod
    def forward(ctx, tensor, group):
        ctx.group = group
        total = tensor.clone()
        dist.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx, grad):
        total = grad.clone()
        dist.all_reduce(total, group=ctx.group)
        return total, None


class GroupBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the whole batch of its process group, all-reduced
    with their gradients: mean = Σx / n, then var = Σ(x − mean)² / n. torch's SyncBatchNorm, which needs
    CUDA, takes its place on GPUs."""

    def __init__(self, num_features, group, **settings):
        super().__init__(num_features, **settings)
        self.group = group

    @classmethod
    def like(cls, norm, group):
        """A GroupBatchNorm2d over `group` with the settings, tensors, dtype and device of `norm`."""
        tensors = [t for t in (norm.weight, norm.running_mean) if t is not None]
        factory = {"device": tensors[0].device, "dtype": tensors[0].dtype} if tensors else {}
        new = cls(norm.num_features, group, eps=norm.eps, momentum=norm.momentum, affine=norm.affine,
                  track_running_stats=norm.track_running_stats, **factory)
        new.load_state_dict(norm.state_dict())
        return new

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        channels, shape = x.size(1), (1, -1, 1, 1)
        count = torch.full((1,), x.numel() / channels, dtype=x.dtype, device=x.device)
        sums = SumOverRanks.apply(torch.cat([x.sum((0, 2, 3)), count]), self.group)
        n = sums[-1]
        mean = sums[:channels] / n
        # a second pass over x − mean, as BatchNorm2d: Σx²/n − mean² cancels badly when |mean| ≫ std
        centered = x - mean.view(shape)
        var = SumOverRanks.apply((centered * centered).sum((0, 2, 3)), self.group) / n
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = 1 / self.num_batches_tracked.item() if self.momentum is None else self.momentum
            with torch.no_grad():
                self.running_mean.lerp_(mean, factor)
                self.running_var.lerp_(var * n / (n - 1), factor)
        y = centered * torch.rsqrt(var.view(shape) + self.eps)
        return y * self.weight.view(shape) + self.bias.view(shape) if self.affine else y


def sync_batchnorm(model, group, device):
    """`model` with every BatchNorm2d computing its statistics over the group's whole batch (--sync-bn)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model, process_group=group)
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is nn.BatchNorm2d:
                setattr(module, child_name, GroupBatchNorm2d.like(child, group))
    return model


def weights_digest(state):
    """One number that changes with any floating tensor of a state dict: Σ over them of Σt + Σt², in float64."""
    return sum(float(t.double().sum() + t.double().square().sum()) for _, t in floating_items(state))


class NetworkGroup:
    """This rank's network: the process group of its ranks, its rank in it (0: the leader), and what the
    ranks do together (reduce sums, broadcast the leader's weights, train under DistributedDataParallel).
    Every rank registers its process in torchrun's store, so that one which dies can be named."""

    def __init__(self, layout, rank, device):
        self.layout = layout
        self.global_rank = rank
        self.index = layout.network(rank)
        self.rank = layout.local(rank)
        self.size = layout.size
        self.device = device
        self.leader = layout.leader(self.index)
        # torchrun's processes per machine: does this network's ranks span machines (slower all-reduces)?
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", layout.num * layout.size))
        self.across_machines = self.index in layout.split_networks(per_node)
        self.group = None
        self.store = None
        self._owns_world = False
        self._buffer = None

    @property
    def is_leader(self):
        return self.rank == 0

    def name(self, rank=None):
        """'network i rank k' of global `rank` (default: this one)."""
        rank = self.global_rank if rank is None else rank
        return f"network {self.layout.network(rank)} rank {self.layout.local(rank)}"

    @classmethod
    def join(cls, record, device, timeout):
        """Join the torchrun world (NCCL on a GPU, gloo on the CPU) and the process group of each network
        (every rank creates every group, in order, as torch.distributed asks); `timeout` bounds a collective."""
        rank, world = torchrun_rank()
        group = cls(RankLayout.of_world(world, record.num, record.ranks_per_network), rank, device)
        group.store = torchrun_store()
        group.store.set(f"rank/{rank}", json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
        if device.type == "cuda":
            group.check_own_gpus(timeout)
        if not dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method="env://", rank=rank,
                                    world_size=world, timeout=timedelta(seconds=timeout))
            group._owns_world = True
        for index in range(1, group.layout.num + 1):
            made = dist.new_group(group.layout.ranks(index))
            if index == group.index:
                group.group = made
        return group

    def check_own_gpus(self, timeout):
        """Refuse, before NCCL starts, two ranks of this network on one GPU (NCCL cannot run them; say GPUS=0
        with RANKS_PER_NETWORK=2), naming them."""
        gpu = f"{socket.gethostname()} GPU {torch.cuda.get_device_properties(self.device).uuid}"
        self.store.set(f"gpu/{self.global_rank}", gpu)
        ranks = self.layout.ranks(self.index)
        self.store.wait([f"gpu/{r}" for r in ranks], timedelta(seconds=timeout))
        gpus = [self.store.get(f"gpu/{r}").decode() for r in ranks]
        if gpus.count(gpu) > 1:
            others = [self.name(r) for r, other in zip(ranks, gpus) if other == gpu and r != self.global_rank]
            raise UserError(f"{self.name()} and {', '.join(others)} share one GPU ({gpu}), which NCCL cannot run; "
                            f"give every rank a GPU of its own (GPUS, NPROC_PER_NODE) or lower RANKS_PER_NETWORK")

    def wrap(self, model):
        """`model` under DistributedDataParallel over the network's ranks (gradients averaged over them)."""
        ids = [self.device] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids, process_group=self.group)

    def sum_(self, tensor):
        """`tensor` summed in place over the network's ranks; returned."""
        dist.all_reduce(tensor, group=self.group)
        return tensor

    def broadcast_weights(self, model):
        """Every rank's `model` takes the leader's parameters and buffers (one flat transfer)."""
        state = model.state_dict()
        numel = sum(t.numel() for _, t in floating_items(state))
        self._buffer = reusable(self._buffer, numel, buffer_dtype(state), self.device)
        if self.is_leader:
            flatten(state, self.device, out=self._buffer)
        dist.broadcast(self._buffer, src=self.leader, group=self.group)
        if not self.is_leader:
            model.load_state_dict(unflatten(self._buffer, state))

    def share_weights(self, model):
        """broadcast_weights, then every rank's weights_digest of `model` (gathered on every rank): equal
        digests, equal weights."""
        self.broadcast_weights(model)
        mine = torch.tensor([weights_digest(model.state_dict())], dtype=torch.float64, device=self.device)
        gathered = [torch.empty_like(mine) for _ in range(self.size)]
        dist.all_gather(gathered, mine, group=self.group)
        return [t.item() for t in gathered]

    def culprit(self):
        """Why this rank stops, when another rank is the cause: 'network i rank k (pid … on host) stopped
        without finishing' for a rank of this host whose process is gone without a word, else 'network i
        rank k failed: see its console' for the first rank that stopped on its own account; or None."""
        try:
            world = self.layout.num * self.layout.size
            infos = [json.loads(v) for v in self.store.multi_get([f"rank/{r}" for r in range(world)])]
            said = {r: json.loads(self.store.get(f"rank_failed/{r}")) for r in range(world)
                    if r != self.global_rank and self.store.check([f"rank_failed/{r}"])}
        except (RuntimeError, ValueError, OSError):
            return None
        for r, info in enumerate(infos):
            if r != self.global_rank and r not in said and info["host"] == socket.gethostname() \
                    and not pid_alive(info["pid"]):
                return f"{self.name(r)} ({where(info)}) stopped without finishing"
        first = sorted((word["order"], r) for r, word in said.items() if not word["outside"])
        return f"{self.name(first[0][1])} failed: see its console" if first else None

    def announce_failure(self, outside):
        """Say in the store that this rank stops, `outside` when it was stopped from outside (SIGTERM,
        Ctrl-C): a rank that said so is no culprit, and the first to fail on its own account is one."""
        try:
            order = self.store.add("rank_failures", 1)
            self.store.set(f"rank_failed/{self.global_rank}", json.dumps({"order": order, "outside": outside}))
        except (RuntimeError, OSError):
            pass

    def close(self):
        if self._owns_world and dist.is_initialized():
            dist.destroy_process_group()


def network_group(record, device):
    """The NetworkGroup of a run placed on several ranks per network (place_ranks), else None."""
    if record.network_ranks <= 1:
        return None
    return NetworkGroup.join(record, device, record.graft_timeout + record.heartbeat_timeout)
