"""The run record: what a run was asked to do, with one spelling per field, and where it ran.

Every method script fills one from its flags (the flags' destinations are these field names, whatever the
script's own spelling: `--model` and `-a/--arch` both fill `arch`, `--cifar` fills `num_classes`, `--save`
and `--s` fill `session_dir`) and writes it to its session directory as `session.json`. Plain data: this
module imports nothing of the project, and every other module may read it.
"""
import dataclasses
import json
import os
import platform
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

SCRIPTS = ("grafting_cifar", "grafting_imagenet", "grafting_plus", "stripe_pruning")
RING_SCRIPTS = SCRIPTS[:3]  # one network of a grafting session each

# The fields that say which run a session holds: every network of a session, and every later --resume of
# it, must agree on them. The others (epochs, learning rate, workers, speed flags, the environment) may
# change between a run and its resume.
IDENTITY = ("script", "arch", "dataset", "num_classes", "num", "level", "criterion", "entropy_bins", "conv_only",
            "source", "difflr", "cos", "teachers", "T", "sr", "threshold", "freeze_weights",
            "freeze_skeleton")

# Spellings that sessions written before the run record used, and the field each stands for.
LEGACY_NAMES = {"model": "arch", "cifar": "num_classes", "s": "session_dir", "save": "session_dir",
                "data_path": "data", "i": "index", "print_frequence": "print_freq"}


@dataclass
class RunRecord:
    """Every setting of one run, None where the script has no such setting."""

    script: str = None
    command: list = field(default_factory=list)
    # what is trained, on what
    arch: str = None
    num_classes: int = None
    dataset: str = None
    data: str = None
    session_dir: str = None
    # optimisation
    epochs: int = None
    start_epoch: int = None
    batch_size: int = None
    lr: float = None
    momentum: float = None
    weight_decay: float = None
    cos: bool = False
    lr_step: int = None
    milestones: list = None
    seed: int = None
    resume: object = None  # True/False, or a checkpoint path (grafting_imagenet)
    # the grafting ring
    num: int = 1
    index: int = 1
    a: float = None
    c: float = None
    difflr: bool = False
    lr_per_network: list = None
    level: str = None
    criterion: str = None
    entropy_bins: str = None  # "release" (half-open float32 bins, SPEC §3) or "closed" (corrected)
    conv_only: bool = None  # graft conv weights and their BatchNorms only (the release's VGG script)
    eval_order: str = None  # "pre-graft" (the release's); sessions before it recorded nothing: "post-graft"
    eval_grafted: bool = None
    source: str = None
    noise_decay: float = None
    invalid_threshold: float = None
    graft_timeout: float = None
    heartbeat_timeout: float = None
    exchange: str = None
    pack: list = None  # --pack: the networks trained together in the process that wrote the record
    ranks_per_network: int = None  # torchrun ranks training each network data-parallel (parallel.py)
    rank: int = None  # this process's rank among its network's (0: the leader, which writes the session)
    sync_bn: bool = None  # BatchNorm statistics over all ranks of a network
    # grafting+
    teachers: list = None  # [{"arch", "checkpoint"}]
    T: float = None
    # stripe-wise pruning
    sr: float = None
    threshold: float = None
    freeze_weights: bool = None
    freeze_skeleton: bool = None
    # ImageNet-style data and models
    crop_size: int = None
    resize_size: int = None
    pretrained: bool = None
    evaluate: bool = None
    # loading, logging, speed
    workers: int = None
    print_freq: int = None
    device: str = None
    loader: str = None
    amp: str = None  # "bf16" or "fp16" autocast (sessions before fp16 recorded True for bf16)
    channels_last: bool = None
    compile: str = None
    deterministic: bool = None
    tensorboard: bool = None  # TensorBoard event files in <session>/tb/<i>/ (board.py)
    # where it ran
    environment: dict = field(default_factory=dict)

    @classmethod
    def from_flags(cls, script, args):
        """The record of parsed flags `args` (an argparse.Namespace whose destinations are field names; its
        `command`, when set, is the command line, else this process's)."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in vars(args).items() if k in known}
        return cls(**{"command": list(sys.argv), **values, "script": script})

    @property
    def in_ring(self):
        """Whether the run is one network of a grafting session (every script but stripe pruning)."""
        return self.script in RING_SCRIPTS

    def identity(self):
        """The fields every network and every resume of a session must share."""
        return {name: getattr(self, name) for name in IDENTITY}

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True, default=str)

    @staticmethod
    def fields_in(raw):
        """The fields a session.json holds, this version's or an earlier one's."""
        details = raw.get("details") if isinstance(raw.get("details"), dict) else {}
        return {LEGACY_NAMES.get(key, key) for key in (*raw, *details)}

    @classmethod
    def from_dict(cls, raw):
        """A record from a session.json, this version's or an earlier one's (flat keys, legacy spellings,
        a `details` dict); keys it does not know are dropped."""
        known = {f.name for f in dataclasses.fields(cls)}
        merged = {}
        details = raw.get("details")
        for source in ((details if isinstance(details, dict) else {}), raw):
            for key, value in source.items():
                name = LEGACY_NAMES.get(key, key)
                if name in known and (name not in merged or key == name):
                    merged[name] = value
        if isinstance(merged.get("teachers"), list):
            merged["teachers"] = [t if isinstance(t, dict) else {"arch": t} for t in merged["teachers"]]
        return cls(**merged)

    @property
    def network_ranks(self):
        """The ranks each network trains on: ranks_per_network, 1 when unset (one process per network)."""
        return self.ranks_per_network or 1

    @property
    def teacher_archs(self):
        """The teachers' architectures as a tuple (empty without teachers)."""
        return tuple(t.get("arch") for t in self.teachers or ())


def git_commit(directory):
    """The commit of the git checkout holding `directory` (with '+changes' when it has uncommitted ones),
    or None outside a checkout or without git."""
    try:
        run = dict(cwd=directory, capture_output=True, text=True, timeout=10)
        commit = subprocess.run(["git", "rev-parse", "HEAD"], **run)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], **run).stdout.strip()
        return commit.stdout.strip() + ("+changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment(devices=()):
    """Versions, host and code of this process: Python, torch, torchvision, CUDA, cuDNN, the names of
    `devices` (torch.device objects), the host, the working directory and the git commit."""
    import torch
    import torchvision

    names = [torch.cuda.get_device_name(d) if d.type == "cuda" else platform.processor() or platform.machine()
             for d in devices]
    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "devices": [f"{d}: {name}" for d, name in zip(devices, names)], "host": socket.gethostname(),
            "cwd": os.getcwd(), "commit": git_commit(Path(__file__).resolve().parent)}
