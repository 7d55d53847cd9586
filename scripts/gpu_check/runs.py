"""Parts `scripts` and `ring`: the method scripts run on the device as users run them, one epoch (two for
the rings) on tiny data, and a ring survives a killed network through --resume."""
import math
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from common import PYTHON, REPO, run, script_env, tail
from filtergraft.session import read_jsonl

CIFAR = "grafting_cifar/grafting.py"
DIGITS = ["--dataset", "digits", "--workers", "0", "--seed", "0"]
RING = [*DIGITS, "--model", "resnet20", "--batch-size", "128"]


def speed_flags(device):
    """{label: flags} of the runs of each script: plain and each speed flag. --amp is bfloat16 autocast and
    --amp=fp16 float16 autocast with the gradient scaler, both refused off CUDA."""
    flags = {"plain": [], "--amp": ["--amp"], "--amp=fp16": ["--amp=fp16"], "--channels-last": ["--channels-last"],
             "--compile": ["--compile"]}
    if device.type != "cuda":
        del flags["--amp"], flags["--amp=fp16"]
    return flags


def device_flags(device, flag="--device"):
    """The flags that put a script on `device` (grafting_imagenet.py names its GPU with --gpu N)."""
    if flag == "--gpu":
        return ["--gpu", str(device.index or 0)] if device.type == "cuda" else []
    return [flag, str(device)]


def epochs_of(path):
    """The epochs a metrics file records, and whether every training loss in it is finite."""
    lines = read_jsonl(path) if path.exists() else []
    return [line["epoch"] for line in lines], all(math.isfinite(line.get("train_loss", math.nan)) for line in lines)


def trained(metrics):
    """A training job's proof of success: its one epoch in its metrics file, with a finite loss."""
    def proof(directory):
        done, finite = epochs_of(directory / metrics)
        return done == [1] and finite, f"epochs {done}, finite losses {finite}"
    return proof


def exported(directory):
    """prune.py's proof of success: its report and its exported program."""
    found = (directory / "prune.json").exists() and (directory / "pruned.pt2").exists()
    return found, "prune.json or pruned.pt2 missing"


def scripts(part):
    device, work = part.device, part.work
    flags = speed_flags(device)
    if device.type == "cuda":
        native = torch.cuda.is_bf16_supported(including_emulation=False)
        part.note(f"--amp runs bfloat16 autocast, --amp=fp16 float16 with the gradient scaler; this GPU computes bfloat16 "
                  f"{'natively' if native else 'only emulated (slowly)'}")
    on = device_flags(device)
    folder = work / "imagefolder"
    status, _ = run(["scripts/make_imagefolder.py", folder, "--size", "64", "--per-class-train", "8",
                     "--per-class-val", "4"], work / "imagefolder.out")
    part.check("a small ImageFolder written (digits, 64x64 PNG)", status == 0, tail(work / "imagefolder.out", 1))
    jobs = []
    for label, extra in flags.items():
        jobs.append((f"grafting_cifar/grafting.py, digits, {label}", [CIFAR, *RING, "--epochs", "1", *on, *extra],
                     work / f"cifar{label}", "--s", trained("metrics_1.jsonl")))
        jobs.append((f"stripe_pruning/main.py, digits, ResNet56 skeleton, {label}",
                     ["stripe_pruning/main.py", "--arch", "ResNet56", *DIGITS, "--epochs", "1", "--batch-size", "64",
                      "--sr", "0.005", "--threshold", "0.9622", "--lr", "0.05", *on, *extra],
                     work / f"stripe{label}", "--save", trained("metrics.jsonl")))
        jobs.append((f"grafting_imagenet/grafting.py, ImageFolder, ResNet18, {label}",
                     ["grafting_imagenet/grafting.py", "--data", folder, "-a", "resnet18", "--epochs", "1", "-j", "2",
                      "-b", "16", "--crop-size", "56", "--resize-size", "64", "--seed", "0",
                      *device_flags(device, "--gpu"), *extra],
                     work / f"imagenet{label}", "--s", trained("metrics_1.jsonl")))
    jobs += [("grafting_cifar/grafting.py, FakeData, torchvision pipeline (--loader torch, 2 workers)",
              [CIFAR, "--dataset", "fake", "--model", "resnet20", "--epochs", "1", "--loader", "torch",
               "--workers", "2", *on], work / "cifar-fake-torch", "--s", trained("metrics_1.jsonl"))]
    run_all(part, jobs, device)
    teacher = work / "cifarplain" / "best_1.t7"
    later = [(f"grafting_plus/grafting+.py, digits, a ResNet20 teacher, {label}",
              ["grafting_plus/grafting+.py", "--arch", "resnet20", "--num_classes", "10", *DIGITS, "--epochs", "1",
               "--teacher_arch", "resnet20", "--teacher_dir", teacher, *on, *extra], work / f"plus{label}", "--s",
              trained("metrics_1.jsonl")) for label, extra in flags.items()]
    later.append(("stripe_pruning/prune.py: half the FLOPs, BatchNorm recalibrated, 1 finetuning epoch",
                  ["stripe_pruning/prune.py", work / "stripeplain" / "best.pth.tar", *DIGITS[:4], "--target-flops",
                   "0.5", "--bn-recalibrate", "2", "--finetune-epochs", "1", "--finetune-lr", "0.005", *on],
                  work / "prune", "--save", exported))
    run_all(part, later, device)


def run_all(part, jobs, device):
    """Run (label, command, directory, the flag naming it, proof of success) jobs side by side (a few on a
    GPU, which one tiny run leaves mostly idle; one at a time on the CPU) and check each."""
    def one(job):
        label, command, directory, where, proof = job
        directory.mkdir(parents=True, exist_ok=True)
        log = directory.parent / f"{directory.name}.out"
        status, seconds = run([*command, where, directory], log)
        ok, problem = proof(directory)
        return part.check(label, status == 0 and ok,
                          f"{seconds:.0f}s" if status == 0 and ok else f"exit {status}, {problem}: {tail(log)}")
    with ThreadPoolExecutor(max_workers=4 if device.type == "cuda" else 1) as pool:
        list(pool.map(one, jobs))


def launcher_env(session, gpus, **settings):
    """grafting.sh's settings for a 2-network ring of `session` on `gpus` (none: the CPU)."""
    return script_env(**{"S": session, "NUM": 2, "GPUS": gpus, "EPOCHS": 2, **settings})


def ring(part):
    device, work = part.device, part.work
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    first = str(device.index or 0) if device.type == "cuda" else ""
    rings = [("2 networks on one GPU, file exchange" if gpus else "2 networks on the CPU, file exchange",
              first, "file")]
    if gpus >= 2:
        rings += [("2 networks on two GPUs, file exchange", "0,1", "file"),
                  ("2 networks on two GPUs, torch.distributed exchange (NCCL)", "0,1", "dist")]
    else:
        part.note("fewer than two GPUs here: the two-GPU rings (file and NCCL exchange) were not run")
    for label, gpu_list, exchange in rings:
        session = work / f"ring-{exchange}-{gpu_list.replace(',', '') or 'cpu'}"
        ring_ok(part, label, session, launcher_env(session, gpu_list, EXCHANGE=exchange))
    if gpus >= 4:
        session = work / "ring-2x2"
        ring_ok(part, "2 networks × 2 ranks on four GPUs (DistributedDataParallel, NCCL exchange, --sync-bn)", session,
                launcher_env(session, "0,1,2,3", EXCHANGE="dist", RANKS_PER_NETWORK=2), flags=["--sync-bn"])
    else:
        part.note("fewer than four GPUs here: 2 networks × 2 ranks (RANKS_PER_NETWORK=2) were not run")
    if device.type == "cuda":
        shared_gpu_refused(part, work / "shared-gpu", first)
    kill_and_resume(part, work / "killed", first)


def shared_gpu_refused(part, session, gpu):
    """Two ranks of one network on one GPU (RANKS_PER_NETWORK=2 GPUS=<one>) end in one line before NCCL runs."""
    session.mkdir(parents=True, exist_ok=True)
    log = session.parent / "shared-gpu.launcher.out"
    env = launcher_env(session, gpu, NUM=1, EPOCHS=1, RANKS_PER_NETWORK=2)
    status, _ = run(["bash", REPO / "grafting_cifar/grafting.sh", *RING], log, 300, env)
    line = tail(session / "1.out", 1)
    part.check("two ranks of a network on one GPU are refused with one line", status != 0 and "share one GPU" in line,
               f"exit {status}: {line}")


def ring_ok(part, label, session, env, epochs=2, flags=()):
    """Run grafting.sh for a 2-network ring and check that both networks trained and grafted every epoch."""
    session.mkdir(parents=True, exist_ok=True)
    log = session.parent / f"{session.name}.launcher.out"
    status, seconds = run(["bash", REPO / "grafting_cifar/grafting.sh", *RING, *flags], log, 600, env)
    lines = {i: read_jsonl(session / f"metrics_{i}.jsonl") if (session / f"metrics_{i}.jsonl").exists() else []
             for i in (1, 2)}
    grafts = {i: [line.get("graft", {}).get("layers") for line in v] for i, v in lines.items()}
    ok = status == 0 and all(len(g) == epochs and all(g) for g in grafts.values())
    alphas = [layer["alpha"] for g in grafts.values() for layers in g for layer in layers or []]
    detail = (f"{seconds:.0f}s, {len(alphas)} layer grafts, α {min(alphas):.2f}–{max(alphas):.2f}" if ok
              else f"exit {status}: {tail(log)} | {tail(session / '2.out', 2)}")
    return part.check(label, ok, detail)


def kill_and_resume(part, session, gpu, epochs=4):
    """Network 2 of a ring killed (SIGKILL) once it has finished an epoch: network 1 stops on its own, and the
    launcher's --resume takes both networks on to the last epoch."""
    session.mkdir(parents=True, exist_ok=True)
    env = script_env(CUDA_VISIBLE_DEVICES=gpu) if gpu else script_env()
    common = [PYTHON, REPO / CIFAR, *RING, "--epochs", epochs, "--num", "2", "--s", session, "--graft-timeout", "300"]
    logs = [open(session.parent / f"killed{i}.out", "w") for i in (1, 2)]
    procs = [subprocess.Popen([str(c) for c in (*common, "--i", i)], stdout=log, stderr=subprocess.STDOUT,
                              env=env, cwd=REPO) for i, log in zip((1, 2), logs)]
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not epochs_of(session / "metrics_2.jsonl")[0]:
            if any(p.poll() is not None for p in procs):
                break
            time.sleep(0.2)
        running = procs[1].poll() is None
        if running:
            os.kill(procs[1].pid, signal.SIGKILL)
        done = epochs_of(session / "metrics_2.jsonl")[0]
        try:
            stopped = procs[0].wait(timeout=180) != 0
        except subprocess.TimeoutExpired:
            stopped = False
        part.check("a network killed mid-session: its peer stops by itself",
                   running and 0 < len(done) < epochs and stopped,
                   f"network 2 killed after epoch {done[-1] if done else None} of {epochs}; network 1 exit "
                   f"{procs[0].poll()}: {tail(session / '1.log', 1)}")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        for log in logs:
            log.close()
    resumed = ring_ok(part, "the killed ring resumed with --resume to its last epoch", session,
                      launcher_env(session, gpu, EPOCHS=epochs), epochs, ["--resume"])
    if resumed:
        part.check("the resume continued from the checkpoints", all("resumed from" in (session / f"{i}.log").read_text()
                                                                    for i in (1, 2)))
