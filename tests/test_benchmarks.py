"""The benchmark scripts run on the CPU and print coherent tables: every derived figure (per-core rates,
ratios to compute alone) agrees with the measured columns it comes from. Speeds are not asserted."""
import itertools
import re
import subprocess

import pytest

from filtergraft.models import create_model
from helpers import PYTHON, REPO, run_script, script_env

TINY_TRAIN = ["--models", "resnet32", "--steps", "1", "--repeats", "2", "--images", "256",
              "--batch-size", "32", "--workers", "1", "--variants", "channels-last"]


def number(text):
    return float(text.replace(",", ""))


def agrees_with(shown, decimals, derive, *printed):
    """Whether `shown` (printed with `decimals`) can be derive(*values) for some values that print, rounded
    to whole images/s, as `printed`: derive is monotonic in each value, so the corners bound it."""
    corners = [derive(*(v + d for v, d in zip(printed, signs)))
               for signs in itertools.product((-0.5, 0.5), repeat=len(printed))]
    half = 0.5 * 10 ** -decimals
    return min(corners) - half <= shown <= max(corners) + half


def table_rows(stdout):
    """The Markdown table's body rows as lists of stripped cells."""
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| model")]
    return [row for row in rows if not row[0].startswith("---")]


def test_bench_train_table():
    result = run_script("scripts/bench_train.py", *TINY_TRAIN, timeout=240)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("device: CPU"), result.stdout
    rows = {row[1]: row for row in table_rows(result.stdout)}
    assert list(rows) == ["model compute alone", "model compute alone, --channels-last",
                          "train step, torchvision pipeline", "train step, tensor pipeline",
                          "torchvision pipeline alone", "tensor pipeline alone"]
    assert rows["model compute alone"][0] == "resnet32 (32x32, batch 32)"
    median = {what: number(row[3]) for what, row in rows.items()}
    assert all(number(row[2]) >= number(row[3]) > 0 for row in rows.values())  # best >= median
    compute = median["model compute alone"]
    ratio = float(re.match(r"×([\d.]+) of fp32 compute", rows["model compute alone, --channels-last"][4]).group(1))
    assert agrees_with(ratio, 2, lambda flag, plain: flag / plain, median["model compute alone, --channels-last"], compute)
    for pipeline in ("torchvision", "tensor"):
        change = float(re.match(r"([+-][\d.]+) % against", rows[f"train step, {pipeline} pipeline"][4]).group(1))
        assert agrees_with(change, 1, lambda step, plain: 100 * (step / plain - 1),
                           median[f"train step, {pipeline} pipeline"], compute)
    # torchvision: 1 worker; tensor: the script's one thread (OMP_NUM_THREADS=1 under test)
    per_core = {}
    for pipeline in ("torchvision", "tensor"):
        found = re.match(r"([\d,]+) per CPU core \((\d+) cores\)", rows[f"{pipeline} pipeline alone"][4])
        per_core[pipeline], cores = number(found.group(1)), int(found.group(2))
        assert cores == 1
        assert per_core[pipeline] == pytest.approx(median[f"{pipeline} pipeline alone"], abs=1)
    times = float(re.search(r"×([\d.]+) torchvision per core", rows["tensor pipeline alone"][4]).group(1))
    assert times == pytest.approx(per_core["tensor"] / per_core["torchvision"], rel=0.01, abs=0.06)


def test_bench_train_refuses_amp_on_cpu():
    result = run_script("scripts/bench_train.py", "--variants", "amp", timeout=60)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "error: --variants amp needs a CUDA device" in result.stderr


@pytest.mark.parametrize("exchange", ["file", "dist"])
def test_bench_exchange_row(exchange, tmp_path):
    cmd = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--",
           str(REPO / "scripts/bench_exchange.py"), "--exchange", exchange, "--repeats", "2", "--dir", str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=REPO, env=script_env())
    assert result.returncode == 0, result.stdout + result.stderr
    (row,) = table_rows(result.stdout)
    model, megabytes, backend, exchange_ms, graft_ms, first_ms = row
    state = create_model("resnet56", 10).state_dict().values()
    floating = sum(v.numel() * v.element_size() for v in state if v.is_floating_point()) / 1e6
    assert (model, megabytes, backend) == ("resnet56", f"{floating:.1f} MB", exchange)
    for cell in (exchange_ms, graft_ms):
        best, median = map(float, cell.split(" / "))
        assert 0 < best <= median
    assert float(first_ms) > 0


def test_bench_pack_table():
    result = run_script("scripts/bench_pack.py", "--models", "resnet20", "--nums", "2", "--repeats", "2",
                        "--epochs", "2", timeout=400)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("device: CPU") and "load average" in result.stdout, result.stdout
    assert "fake: 256 training images an epoch, batch 128, 2 epochs a run (1 timed), 2 interleaved repeats" \
        in result.stdout
    (row,) = table_rows(result.stdout)
    model, num, *cells, ratio = row
    assert (model, num) == ("resnet20", "2")
    seconds = [tuple(map(float, cell.split(" / "))) for cell in cells[:2]]
    rates = [tuple(map(number, cell.split(" / "))) for cell in cells[2:]]
    for (fastest, median), (best, median_rate) in zip(seconds, rates):
        assert 0 < fastest <= median and best >= median_rate > 0
        # images/s = N · 256 / epoch seconds, the seconds printed to 0.01, the rate to 1
        assert 512 / (fastest + 0.005) - 0.5 <= best <= 512 / (fastest - 0.005) + 0.5
    shown = float(ratio.lstrip("×"))
    assert shown == pytest.approx(rates[0][1] / rates[1][1], rel=0.02, abs=0.01)


def test_bench_ranks_table():
    """One network on 1 and on 2 ranks of the real script: a row each, the speed-up their rates' ratio."""
    result = run_script("scripts/bench_ranks.py", "--dataset", "fake", "--epochs", "2", "--ranks", "1", "2",
                        timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("# one resnet20 network on fake, batch 128 over its ranks, 2 epochs; ")
    header, *rows = table_rows(result.stdout)
    assert header == ["ranks", "images/s", "speed-up", "final test acc"]
    assert [row[0] for row in rows] == ["1", "2"]
    rates = [number(row[1]) for row in rows]
    assert all(rate > 0 for rate in rates) and rows[0][2] == "1.00x"
    assert float(rows[1][2].rstrip("x")) == pytest.approx(rates[1] / rates[0], rel=0.01, abs=0.01)
