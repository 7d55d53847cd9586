"""The GPU check: does every CUDA path of the project work on this machine, and how fast is it?

    python scripts/gpu_check                       # every part (make gpu-check)
    python scripts/gpu_check --part scripts ring   # some parts (make gpu-check PART="scripts ring")
    python scripts/gpu_check --list                # the parts and what each does

The CPU-side checks run first, always. Without CUDA that is all: one line says so, and the exit status is
theirs. With CUDA each part's checks and figures go into OUT/<part>.json, and OUT/report.md is written
anew from every part found in OUT, so parts run in separate slices of GPU time add up to one report.
Exits non-zero when a check failed.
"""
import sys
import time
import traceback
from pathlib import Path

# Sibling modules of this folder, the benchmarks in scripts/ and the filtergraft package, wherever the
# check was started from.
HERE = Path(__file__).resolve().parent
for path in (HERE, HERE.parent, HERE.parents[1]):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import torch  # noqa: E402

import checks  # noqa: E402
from filtergraft.cli import ScriptParser  # noqa: E402
import report  # noqa: E402
import runs  # noqa: E402
import speed  # noqa: E402
from common import Part  # noqa: E402

# name: (function, what it does). Each part is sized to take under PART_BUDGET seconds on one GPU, all of them
# under 20 minutes, since GPU time often comes in short slices.
PART_BUDGET = 8 * 60
PARTS = {
    "agree": (checks.agree, "tensor pipeline batches and the graft (α, weights) on CUDA against the CPU"),
    "scripts": (runs.scripts, "each method script 1 epoch on digits / FakeData / an ImageFolder: plain and "
                              "each speed flag; prune.py on the trained skeleton"),
    "ring": (runs.ring, "2 grafting networks on one GPU and on two (file and NCCL exchange); a network "
                        "killed, the ring resumed"),
    "train32": (speed.train32, "training images/s of ResNet32 and ResNet56 at 32x32"),
    "train32-deep": (speed.train32_deep, "training images/s of ResNet110 and MobileNetV2 at 32x32"),
    "train224": (speed.train224, "training images/s of ResNet18/50 at 224x224"),
    "exchange": (speed.exchange, "exchange + graft time against one CIFAR epoch"),
    "stripe": (speed.stripe, "pruned VGG16 / ResNet56 at 70 / 90 % FLOPs reduction against dense"),
}


def parse_args(argv):
    parser = ScriptParser(prog="gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--part", nargs="+", default=["all"], metavar="PART",
                        help=f"all (default) or some of: {', '.join(PARTS)}")
    parser.add_argument("--out", default="runs/gpu_check", help="folder of the report and the parts' results")
    parser.add_argument("--device", default="cuda",
                        help="where the GPU parts run (default cuda; cpu runs them as a dry run of the kit "
                             "itself, whose figures say nothing about a GPU)")
    parser.add_argument("--list", action="store_true", help="list the parts and exit")
    args = parser.parse_args(argv)
    names = list(PARTS) if args.part == ["all"] else args.part
    unknown = [n for n in names if n not in PARTS]
    if unknown:
        parser.error(f"unknown part {unknown[0]!r}; the parts are all, {', '.join(PARTS)}")
    args.part = names
    try:
        args.device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"unknown device {args.device!r}; use cuda, cuda:N or cpu")
    if args.device.type not in ("cuda", "cpu"):
        parser.error(f"--device {args.device}: the check runs on cuda, cuda:N or cpu")
    if args.device.type == "cuda" and (args.device.index or 0) >= max(torch.cuda.device_count(), 1):
        parser.error(f"--device {args.device}: this machine has {torch.cuda.device_count()} GPU(s), numbered from 0")
    return args


def run_part(name, function, device, out):
    """Run one part; an exception inside it is a failed check of that part, not the end of the check."""
    part = Part(name, device, out)
    try:
        function(part)
    except Exception as err:  # noqa: BLE001  every other part still runs and the report names this one
        part.check("the part ran to its end", False, f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
                   if str(err) else type(err).__name__)
        traceback.print_exc(file=sys.stderr)
    return part


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.list:
        for name, (_, what) in PARTS.items():
            print(f"{name:12} {what}")
        return 0
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cpu_part = run_part("cpu", checks.cpu, torch.device("cpu"), out)
    device = args.device
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device on this machine: ran the CPU-side checks only "
              f"({len(cpu_part.checks) - len(cpu_part.failed)} of {len(cpu_part.checks)} passed); run it on a GPU "
              f"machine for the rest")
        return 1 if cpu_part.failed else 0
    environment = report.environment(device)
    cpu_part.save(environment)
    failed = list(cpu_part.failed)
    for name in args.part:
        print(f"== {name}: {PARTS[name][1]}", flush=True)
        part = run_part(name, PARTS[name][0], device, out)
        seconds = time.time() - part.started
        if seconds > PART_BUDGET:
            part.note(f"the part took {seconds / 60:.1f} min, over its {PART_BUDGET // 60}-minute budget")
        part.save(environment)
        failed += part.failed
    path = report.write(out)
    print(f"gpu_check: report in {path}; {len(failed)} check(s) failed" if failed else
          f"gpu_check: report in {path}; every check passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
