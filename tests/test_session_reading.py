"""Reading sessions back through filtergraft.session on directories made by hand: the run records of earlier
versions, the stripe architectures' names old and new, broken metrics lines, and what the launch scripts
ask of their sessions (filtergraft.results.launcher, and grafting+.sh over rows already trained)."""
import json
import subprocess

import pytest

from filtergraft.results.paper import configuration, paper_rows_for
from filtergraft.session import SINGLE_RUN_FILES, network_files, read_jsonl, read_session
from helpers import PYTHON, REPO, run_shell, script_env


def write_metrics(path, accs, tail=""):
    """A metrics file of one line per epoch with test accuracies `accs`, then `tail` verbatim."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"epoch": e, "test_acc": a, "best_acc": max(accs[:e])}) for e, a in enumerate(accs, 1)]
    path.write_text("".join(line + "\n" for line in lines) + tail)


def test_an_earlier_run_record_is_read_with_its_spellings(tmp_path):
    for i in (1, 2):
        write_metrics(tmp_path / network_files(i).metrics, [60.0, 70.0])
    (tmp_path / "session.json").write_text(json.dumps({  # before record.py: model, cifar, a details dict
        "script": "grafting_cifar", "model": "resnet56", "cifar": 100, "num": 2, "dataset": "cifar",
        "level": "layer", "criterion": "entropy", "source": "external", "difflr": True, "cos": True,
        "details": {"epochs": 200, "lr": 0.1}}))
    session = read_session(tmp_path)
    config = configuration(session)
    assert (config["arch"], config["num_classes"], config["epochs"], session.get("lr")) == ("resnet56", 100, 200, 0.1)
    assert [row.value for row in paper_rows_for(config)] == ["72.83"]
    assert session.state == "in progress" and [n.best for n in session.networks] == [70.0, 70.0]


STRIPE = [("stripe_vgg16", "cifar", 10, 1e-5, "−92.66 % params, −71.16 % FLOPs, accuracy +0.4"),
          ("VGG", "cifar", 10, 1e-5, "−92.66 % params, −71.16 % FLOPs, accuracy +0.4"),
          ("stripe_resnet56", "cifar", 10, 1e-5, "−75.6 % params, −77.7 % FLOPs, accuracy −0.12"),
          ("ResNet56", "cifar", 10, 1e-5, "−75.6 % params, −77.7 % FLOPs, accuracy −0.12"),
          ("stripe_resnet18", "imagefolder", 1000, 2e-5, "−54.58 % FLOPs, top-1 −0.17"),
          ("ResNet18", "imagefolder", 1000, 5e-6, "−50.48 % FLOPs, top-1 +0.23")]


@pytest.mark.parametrize("arch, dataset, classes, sr, expected", STRIPE)
def test_stripe_sessions_of_either_naming_get_the_papers_row(tmp_path, arch, dataset, classes, sr, expected):
    write_metrics(tmp_path / SINGLE_RUN_FILES.metrics, [50.0])
    (tmp_path / "prune.json").write_text(json.dumps({"params": 10, "params_pruned": 2, "acc": 50.0}))
    (tmp_path / "session.json").write_text(json.dumps({"script": "stripe_pruning", "arch": arch, "dataset": dataset,
                                                       "num_classes": classes, "sr": sr, "threshold": 0.01}))
    session = read_session(tmp_path)
    assert session.kind == "stripe" and session.prune["params_pruned"] == 2
    assert [row.value for row in paper_rows_for(configuration(session))] == [expected]


def test_broken_metrics_lines_are_skipped_and_described(tmp_path):
    path = tmp_path / "metrics_1.jsonl"
    write_metrics(path, [10.0, 20.0], tail='{"note": 1}\n{"epoch": 3, "test_a')
    problems = []
    assert [r["epoch"] for r in read_jsonl(path, problems)] == [1, 2] == [r["epoch"] for r in read_jsonl(path)]
    assert problems == ["metrics_1.jsonl: line 3 has no epoch; skipped",
                        "metrics_1.jsonl: the last line is not complete JSON (a write cut short?); skipped"]
    with pytest.raises(OSError):
        read_jsonl(tmp_path / "missing.jsonl")


@pytest.fixture
def rows(tmp_path):
    """grafting+.sh's sessions as if trained for 2 epochs: the teacher, then rows under plus/; grafting+ has
    only its first network's metrics (one cut short), distillation none yet."""
    write_metrics(tmp_path / "teacher" / "metrics_1.jsonl", [50.0, 61.234])
    (tmp_path / "teacher" / "best_1.t7").write_bytes(b"")
    write_metrics(tmp_path / "plus" / "baseline" / "metrics_1.jsonl", [40.5, 45.125])
    write_metrics(tmp_path / "plus" / "grafting" / "metrics_1.jsonl", [41.0, 47.0])
    write_metrics(tmp_path / "plus" / "grafting" / "metrics_2.jsonl", [42.0, 44.0], tail='{"epoch": 3, "te')
    return tmp_path


def launcher(*args):
    result = subprocess.run([PYTHON, "-m", "filtergraft.results.launcher", *map(str, args)], capture_output=True,
                            text=True, timeout=60, env=script_env(), cwd=REPO)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_launchers_questions(rows):
    plus = rows / "plus"
    assert [launcher("done", plus / name, num) for name, num in
            (("grafting", 2), ("baseline", 1), ("grafting+", 2), ("nowhere", 1))] == ["2\n", "2\n", "0\n", "0\n"]
    assert launcher("file", rows / "teacher", 1, "best") == f"{rows / 'teacher' / 'best_1.t7'}\n"
    table = launcher("table", plus, rows / "teacher", "baseline 1", "grafting 2", "distillation 1", "grafting+ 2")
    assert table == ("teacher: 61.23\n"
                     "| method | net 1 | net 2 | mean |\n"
                     "|---|---|---|---|\n"
                     "| baseline | 45.12 |  | 45.12 |\n"
                     "| grafting | 47.00 | 44.00 | 45.50 |\n"
                     "| distillation | - |  | - |\n"
                     "| grafting+ | - | - | - |\n")


def test_grafting_plus_launcher_keeps_trained_rows_and_prints_the_table(rows):
    plus = rows / "plus"
    for name, num in (("distillation", 1), ("grafting+", 2)):
        for i in range(1, num + 1):
            write_metrics(plus / name / f"metrics_{i}.jsonl", [30.0 + i, 39.995])
    result = run_shell("grafting_plus/grafting+.sh", timeout=120, env=script_env(
        S=plus, TEACHER_S=rows / "teacher", EPOCHS=2, TEACHER="resnet56", STUDENT="resnet32", CIFAR=100))
    assert result.returncode == 0, result.stderr
    kept = [f"{d}: already trained for 2 epochs, kept" for d in (rows / "teacher", *(plus / n for n in
                                                                                      ("baseline", "grafting", "distillation", "grafting+")))]
    assert result.stdout.splitlines() == [
        f"== teacher resnet56 ({rows / 'teacher'})", kept[0],
        "== baseline: 1 student(s)", kept[1], "== grafting: 2 student(s)", kept[2],
        "== distillation: 1 student(s)", kept[3], "== grafting+: 2 student(s)", kept[4], "",
        "Grafting+ resnet56 -> resnet32, cifar with 100 classes, best test accuracy (%):",
        "teacher: 61.23", "| method | net 1 | net 2 | mean |", "|---|---|---|---|",
        "| baseline | 45.12 |  | 45.12 |", "| grafting | 47.00 | 44.00 | 45.50 |",
        "| distillation | 39.99 |  | 39.99 |", "| grafting+ | 39.99 | 39.99 | 39.99 |"]
