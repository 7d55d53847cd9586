"""make gpu-check (scripts/gpu_check) on this CPU machine: it runs its CPU-side checks, says in one line that
there is no CUDA and exits 0; those checks catch a wrong α; a GPU part run on the CPU (the kit's dry run)
writes the Markdown report; bad input is one line."""
import subprocess

import pytest

from helpers import PYTHON, REPO, script_env

KIT = REPO / "scripts" / "gpu_check"
CPU_CHECKS = ["tensor pipeline: one seed, one sequence of batches",
              "tensor pipeline without augmentation = torchvision's ToTensor + Normalize",
              "grafting α = the formula from a NumPy histogram", "grafted weights = α·W + (1 − α)·W_peer"]


def gpu_check(*args, timeout=300):
    return subprocess.run([PYTHON, str(KIT), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env=script_env())


def test_make_gpu_check_without_cuda_runs_the_cpu_checks_and_exits_0(tmp_path):
    result = subprocess.run(["make", "-s", "gpu-check", f"PYTHON={PYTHON}", f"OUT={tmp_path / 'out'}"],
                            capture_output=True, text=True, timeout=300, cwd=REPO, env=script_env())
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    checked = [line for line in lines if line.startswith("ok   cpu: ")]
    assert len(checked) == len(CPU_CHECKS) and all(line.startswith(f"ok   cpu: {name} (")
                                                   for line, name in zip(checked, CPU_CHECKS)), lines
    (no_cuda,) = [line for line in lines if "CUDA" in line]
    assert no_cuda == lines[-1] and no_cuda.startswith("gpu_check: no CUDA device on this machine")
    assert "(4 of 4 passed)" in no_cuda
    assert "FAIL" not in result.stdout and not (tmp_path / "out" / "report.md").exists()


@pytest.fixture
def kit(monkeypatch):
    """The kit's modules, importable as its runner imports them."""
    for path in (KIT, KIT.parent):
        monkeypatch.syspath_prepend(str(path))
    import checks
    from common import Part
    return checks, Part


def test_the_cpu_checks_catch_a_wrong_graft_coefficient(kit, monkeypatch, tmp_path, one_thread):
    checks, Part = kit
    part = Part("cpu", "cpu", tmp_path)
    checks.cpu(part)
    assert [c["name"] for c in part.checks] == CPU_CHECKS and not part.failed
    # α of another c: most layers' α move by more than one rounding step, and the check says so
    monkeypatch.setattr(checks, "formula_alpha", lambda h_self, h_peer: round(0.5 + 0.1 * (h_self - h_peer), 2))
    wrong = Part("cpu", "cpu", tmp_path)
    checks.cpu(wrong)
    assert [c["name"] for c in wrong.failed] == ["grafting α = the formula from a NumPy histogram"]


def test_a_gpu_part_on_the_cpu_writes_the_report(tmp_path):
    result = gpu_check("--device", "cpu", "--part", "agree", "--out", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok   agree: tensor pipeline: the same batches on cpu as on the CPU" in result.stdout
    assert result.stdout.splitlines()[-1] == f"gpu_check: report in {tmp_path / 'report.md'}; every check passed"
    report = (tmp_path / "report.md").read_text()
    assert report.startswith("# GPU check") and "**Every check passed.**" in report
    assert "## cpu (" in report and "## agree (" in report and "- device: CPU" in report
    assert sorted(p.name for p in tmp_path.glob("*.json")) == ["agree.json", "cpu.json"]


@pytest.mark.parametrize("args, message", [
    (["--part", "scripts", "gpus"], "gpu_check: error: unknown part 'gpus'; the parts are all, agree, scripts"),
    (["--part"], "gpu_check: error: argument --part: expected at least one argument"),
])
def test_bad_input_is_one_line(args, message):
    result = gpu_check(*args)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert message in result.stderr.strip().splitlines()[-1], result.stderr
    assert result.stdout == ""


def test_the_parts_are_listed():
    result = gpu_check("--list")
    assert result.returncode == 0, result.stderr
    assert [line.split()[0] for line in result.stdout.splitlines()] == \
        ["agree", "scripts", "ring", "train32", "train32-deep", "train224", "exchange", "stripe"]
