"""Training and evaluation loops, learning-rate schedules, checkpoint and resume, the metrics log."""
import bisect
import math
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .checkpoint import check_matching, state_dict_of
from .errors import FlagError, UserError
from .rng import rng_state, set_rng_state


def resolve_device(name=None):
    """`name` as a torch.device; None means CUDA when available, else the CPU."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device '{name}'; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FlagError("device", f"{{flag}} {name}: CUDA is not available on this machine; drop {{flag}} to "
                                  f"run on the CPU")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise FlagError("device", f"{{flag}} {name}: this machine has {torch.cuda.device_count()} GPU(s), "
                                  f"numbered from 0")
    return device


def is_out_of_memory(err):
    """Whether `err` is an allocation that failed: MemoryError, torch.OutOfMemoryError on a GPU, or the
    RuntimeError of torch's host allocator."""
    text = str(err)
    return isinstance(err, (MemoryError, torch.OutOfMemoryError)) or (
        isinstance(err, RuntimeError) and ("can't allocate memory" in text or "not enough memory" in text))


# --amp: autocast dtypes by name; fp16 also scales the loss (torch.amp.GradScaler) against underflow.
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device, amp):
    """Autocast to `amp` (a name of AMP_DTYPES) on `device`'s type, or a context that changes nothing (None)."""
    return torch.autocast(device.type, dtype=AMP_DTYPES.get(amp, torch.bfloat16), enabled=amp is not None)


def sgd(model, lr, momentum=0.9, weight_decay=5e-4):
    """SGD with momentum and weight decay over all parameters that require gradients."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def difflr(lr, index, num):
    """Initial learning rate of network i of N under --difflr: lr·(1 + cos(π·(N − i)/N)) / 2."""
    return lr * (1 + math.cos(math.pi * (num - index) / num)) / 2


class LRSchedule:
    """Per-iteration learning-rate factor: cosine, 0.5·(1 + cos(π·t/T)) over all T iterations, or
    step, gamma^(number of milestone epochs passed)."""

    def __init__(self, epochs, iters_per_epoch, cosine=False, milestones=(), gamma=0.1):
        self.total = epochs * iters_per_epoch
        self.iters_per_epoch = iters_per_epoch
        self.cosine = cosine
        self.milestones = sorted(milestones)
        self.gamma = gamma

    def __call__(self, iteration):
        if self.cosine:
            return 0.5 * (1 + math.cos(math.pi * min(iteration, self.total) / self.total))
        epochs_done = iteration // self.iters_per_epoch
        return self.gamma ** bisect.bisect_right(self.milestones, epochs_done)


def every(step, epochs):
    """Milestones at every `step` epochs: step, 2·step, ... below `epochs`."""
    return list(range(step, epochs, step))


def cross_entropy_loss(logits, targets, inputs):
    """The plain objective: (CE(logits, targets), no extra parts)."""
    return F.cross_entropy(logits, targets), {}


def correct_topk(logits, targets, topk):
    """Number of samples whose target is among the k best logits, for each k (a tensor, no sync)."""
    best = logits.topk(max(topk), dim=1).indices
    hits = best.eq(targets[:, None])
    return torch.stack([hits[:, :k].any(dim=1).sum() for k in topk])


@torch.no_grad()
def evaluate(model, loader, device, topk=(1,), prefix="test", amp=None, memory_format=torch.contiguous_format,
             group=None):
    """{prefix_loss: mean cross-entropy, prefix_acc: top-1 %, prefix_acc<k>: top-k %} of `model` on `loader`;
    with a parallel.NetworkGroup, `loader` is this rank's shard and the sums are those of all shards."""
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros(len(topk), device=device)
    seen = 0
    for inputs, targets in loader:
        inputs = inputs.to(device, non_blocking=True, memory_format=memory_format)
        targets = targets.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(inputs).float()
        loss_sum += F.cross_entropy(logits, targets, reduction="sum")
        correct += correct_topk(logits, targets, topk)
        seen += targets.size(0)
    sums = torch.cat([loss_sum.view(1), correct, torch.tensor([float(seen)], device=device)])
    if group is not None:
        group.sum_(sums)
    loss_sum, *correct, seen = sums.tolist()
    accs = [100.0 * c / seen for c in correct]
    result = {f"{prefix}_loss": loss_sum / seen, f"{prefix}_acc": accs[0]}
    for k, acc in zip(topk[1:], accs[1:]):
        result[f"{prefix}_acc{k}"] = acc
    return result


class Trainer:
    """Runs epochs of one network: train, evaluate, the best checkpoint, an optional end-of-epoch hook
    (grafting), then the last checkpoint and the metrics line of its session."""

    def __init__(self, model, optimizer, train_loader, test_loader, session, *, device, epochs,
                 schedule, loss_fn=cross_entropy_loss, print_freq=50, topk=(1,), after_backward=None,
                 check_abort=None, generator=None, meta=None, amp=None, channels_last=False, compile=None,
                 group=None):
        self.model = model
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            model.to(memory_format=torch.channels_last)
        # With a parallel.NetworkGroup the network trains under DistributedDataParallel over its ranks.
        self.group = group
        forward = group.wrap(model) if group is not None else model
        # The compiled module shares its parameters with `model`, whose state dict keeps the plain names.
        self.forward = torch.compile(forward, backend=compile) if compile else forward
        self.amp = amp
        self.scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None
        self.optimizer = optimizer
        self.schedule = schedule
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        self.train_loader = train_loader
        self.test_loader = test_loader
        self.session = session
        self.device = device
        self.epochs = epochs
        self.loss_fn = loss_fn
        self.print_freq = print_freq
        self.topk = topk
        self.after_backward = after_backward
        self.check_abort = check_abort
        self.generator = generator
        self.meta = meta or {}
        self.best_acc = 0.0
        self.start_epoch = 1
        # Callables (epoch, metrics record, model), e.g. board.EpochWriter; called after each epoch's metrics
        # line and last checkpoint, so that what they record never gets ahead of the metrics file.
        self.on_epoch = []

    def _to_device(self, inputs, targets):
        inputs = inputs.to(self.device, non_blocking=True, memory_format=self.memory_format)
        return inputs, targets.to(self.device, non_blocking=True)

    def _autocast(self):
        return autocast(self.device, self.amp)

    @property
    def lr(self):
        return self.optimizer.param_groups[0]["lr"]

    def train_epoch(self, epoch):
        """One pass over the training data; returns mean loss (and its parts) and top-1 accuracy."""
        training = self.train_pass(epoch)
        # disable=None: tqdm draws only on a terminal; elsewhere the log lines say how far the epoch is
        bar = tqdm(self.train_loader, desc=f"epoch {epoch}", leave=False, disable=None)
        training.console = bar.disable
        for inputs, targets in bar:
            training.step(inputs, targets)
        bar.close()
        return training.result()

    def train_pass(self, epoch):
        """A TrainPass over this epoch's batches, fed one batch at a time (a pack feeds its members in turn)."""
        return TrainPass(self, epoch)

    def evaluate(self, prefix="test"):
        """Mean cross-entropy and top-k accuracies (percent) on the test loader."""
        return evaluate(self.forward, self.test_loader, self.device, self.topk, prefix, self.amp, self.memory_format,
                        self.group)

    def last_checkpoint(self, epoch, record=None):
        """Everything --resume needs to continue after `epoch`, with that epoch's metrics `record` (what a
        resume writes back when a kill struck between this checkpoint and the metrics line)."""
        generators = [self.generator] if self.generator is not None else []
        state = {"net": self.model.state_dict(), "epoch": epoch, "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "best_acc": self.best_acc,
                 "rng": rng_state(*generators), **self.meta}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state if record is None else {**state, "metrics": record}

    def resume(self, state=None, source=None):
        """Continue from the session's last checkpoint (or `state`, read from `source`): weights, optimizer,
        position in the schedule, best accuracy and random generators; metrics lines past it are dropped."""
        source = source or self.session.last_path
        state = self.session.load_last() if state is None else state
        check_matching(state, self.model, self.meta, f"--resume {source}")
        net = state_dict_of(state, source)
        self.model.load_state_dict(net)
        self.optimizer.load_state_dict(state["optimizer"])
        if "scheduler" in state:
            # The iteration count is restored; the schedule itself is this run's (a longer --epochs extends it,
            # --steplr replaces a cosine), and so is the rate at that iteration. LambdaLR would copy the saved
            # schedule's attributes onto ours (its lr_lambdas entries); None leaves ours as they are.
            saved = {**state["scheduler"], "lr_lambdas": [None] * len(self.optimizer.param_groups)}
            self.scheduler.load_state_dict(saved)
            self._set_rate(self.scheduler.last_epoch)
        self.best_acc = state.get("best_acc", 0.0)
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        if "rng" in state:
            set_rng_state(state["rng"], *([self.generator] if self.generator is not None else []))
        self.start_epoch = state["epoch"] + 1
        self.session.sync_metrics(state["epoch"], state.get("metrics"))
        self.session.log(f"resumed from {source} after epoch {state['epoch']} "
                         f"(best {self.best_acc:.2f}%)")

    def start_at(self, epoch):
        """Begin at `epoch` as if epochs 1..epoch−1 had run: the schedule, and so the learning rate, included."""
        done = (epoch - 1) * len(self.train_loader)
        self.start_epoch = epoch
        self.scheduler.last_epoch = done
        self._set_rate(done)

    def _set_rate(self, iteration):
        """Every parameter group's learning rate as the schedule has it after `iteration` steps."""
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            group["lr"] = base * self.schedule(iteration)

    def fit(self, epoch_end=None):
        """Train from start_epoch to epochs. Each epoch, as the releases: train, evaluate (the reported
        accuracy; the best checkpoint is this network), then `epoch_end(epoch) -> dict` (the graft, which
        may change the weights; what it returns goes into the metrics line), then the last checkpoint."""
        if self.start_epoch == 1:
            self.session.sync_metrics(0)
        for epoch in range(self.start_epoch, self.epochs + 1):
            start = time.perf_counter()
            record = {"epoch": epoch, "lr": self.lr}
            record.update(self.train_epoch(epoch))
            self.evaluate_epoch(record)
            if epoch_end is not None:
                record.update(epoch_end(epoch))
            self.end_epoch(record, time.perf_counter() - start)
            self.session.save_last(self.last_checkpoint(epoch, record))
            self.record_epoch(record)
        return self.best_acc

    def evaluate_epoch(self, record):
        """Evaluate into `record` (the epoch's metrics so far) and save the best checkpoint when it is one."""
        record.update(self.evaluate())
        if record["test_acc"] > self.best_acc:
            self.best_acc = record["test_acc"]
            self.session.save_best({"net": self.model.state_dict(), "acc": record["test_acc"],
                                    "epoch": record["epoch"], **self.meta})
        record["best_acc"] = self.best_acc

    @staticmethod
    def end_epoch(record, seconds):
        """Close the epoch's metrics `record`: how long it took, and when it ended (seconds since the epoch)."""
        record["epoch_time"] = seconds
        record["time"] = time.time()

    def record_epoch(self, record):
        """After the last checkpoint: the metrics line, the log line and the on_epoch callbacks of `record`."""
        self.session.append_metrics(record)
        grafted = f" grafted {record['test_acc_grafted']:.2f}%" if "test_acc_grafted" in record else ""
        self.session.log(f"epoch {record['epoch']}/{self.epochs} lr {record['lr']:.5f} | train loss "
                         f"{record['train_loss']:.4f} acc {record['train_acc']:.2f}% | test loss "
                         f"{record['test_loss']:.4f} acc {record['test_acc']:.2f}% "
                         f"(best {self.best_acc:.2f}%){grafted} | {record['epoch_time']:.1f}s")
        for callback in self.on_epoch:
            callback(record["epoch"], record, self.model)


class TrainPass:
    """One epoch of a Trainer's training, a batch per `step`: forward, loss, backward, the step after
    backward, optimizer and schedule steps, running totals and the periodic log line."""

    def __init__(self, trainer, epoch):
        self.trainer = trainer
        self.epoch = epoch
        self.batches = len(trainer.train_loader)
        self.steps = 0
        self.totals, self.parts, self.seen = None, {}, 0
        self.correct = torch.zeros((), device=trainer.device)
        self.console = True  # log lines also on the console (off while a progress bar draws)
        trainer.model.train()

    def step(self, inputs, targets):
        t = self.trainer
        if t.check_abort is not None:
            t.check_abort()
        inputs, targets = t._to_device(inputs, targets)
        with t._autocast():
            logits = t.forward(inputs)
            loss, self.parts = t.loss_fn(logits, targets, inputs)
        n = targets.size(0)
        t.optimizer.zero_grad(set_to_none=True)
        share = self.share(n)
        self.backward(loss * share if share != 1 else loss)
        t.scheduler.step()
        values = torch.stack([loss.detach(), *(p.detach() for p in self.parts.values())]) * n
        self.totals = values if self.totals is None else self.totals + values
        self.correct += correct_topk(logits.detach(), targets, (1,))[0]
        self.seen += n
        self.steps += 1
        if self.steps % t.print_freq == 0 or self.steps == self.batches:
            line = (f"epoch {self.epoch} [{self.steps}/{self.batches}] loss {self.totals[0].item() / self.seen:.4f} "
                    f"acc {100.0 * self.correct.item() / self.seen:.2f}% lr {t.lr:.5f}")
            t.session.log(line, console=self.console)

    def share(self, n):
        """The factor of this rank's mean loss over its `n` images that makes the mean DistributedDataParallel
        takes over the ranks the mean over the whole batch: n·M / (the batch), 1 but for a last batch that
        does not split evenly (and 1 without ranks)."""
        t = self.trainer
        if t.group is None or self.steps + 1 < self.batches:
            return 1.0
        batch = t.group.sum_(torch.tensor([float(n)], device=t.device)).item()
        return n * t.group.size / batch

    def backward(self, loss):
        """Gradients of `loss`, the step after backward, the optimizer step; with fp16 through the gradient
        scaler, the gradients unscaled before the step after backward sees them."""
        t = self.trainer
        if t.scaler is None:
            loss.backward()
            if t.after_backward is not None:
                t.after_backward(t.model)
            t.optimizer.step()
            return
        t.scaler.scale(loss).backward()
        if t.after_backward is not None:
            t.scaler.unscale_(t.optimizer)
            t.after_backward(t.model)
        t.scaler.step(t.optimizer)
        t.scaler.update()

    def result(self):
        """{train_loss, train_acc, train_<part>...}: the means over the pass (over all ranks of a network)."""
        t = self.trainer
        sums = torch.cat([self.totals, self.correct.view(1).to(self.totals.dtype),
                          torch.tensor([float(self.seen)], device=self.totals.device)])
        if t.group is not None:
            t.group.sum_(sums)
        *totals, correct, seen = sums.tolist()
        means = [total / seen for total in totals]
        result = {"train_loss": means[0], "train_acc": 100.0 * correct / seen}
        result.update({f"train_{name}": value for name, value in zip(self.parts, means[1:])})
        return result
