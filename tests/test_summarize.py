"""scripts/summarize.py, filtergraft.session's reader and filtergraft.results on real tiny sessions (fake data,
ResNet20, 2 epochs): the table's numbers against the metrics files, the paper's numbers only for matching
configurations, the plots, and broken or foreign directories reported instead of fatal."""
import csv
import json
import shutil
import subprocess

import numpy as np
import pytest
from matplotlib.image import imread

from filtergraft.models import create_model
from filtergraft.results.paper import comparable_baselines
from filtergraft.results.plots import filter_norms, graft_matrix
from filtergraft.results.tables import csv_rows, markdown
from filtergraft.session import find_sessions, read_session
from helpers import REPO, one_error_line, run_script, script_env, start_script

SUMMARIZE = "scripts/summarize.py"
FLAGS = ["--dataset", "fake", "--model", "resnet20", "--epochs", 2, "--workers", 0, "--seed", 0]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """runs/grafting: 2 networks grafting for 2 epochs; runs/baseline: 1 network, 2 epochs; all at once."""
    root = tmp_path_factory.mktemp("runs")
    procs = [start_script("grafting_cifar/grafting.py", "--num", 2, "--i", i, "--s", root / "grafting", *FLAGS,
                          log_path=root / f"grafting_{i}.out") for i in (1, 2)]
    procs.append(start_script("grafting_cifar/grafting.py", "--num", 1, "--s", root / "baseline", *FLAGS,
                              log_path=root / "baseline.out"))
    try:
        codes = [p.wait(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    outputs = "".join(path.read_text() for path in sorted(root.glob("*.out")))
    assert codes == [0, 0, 0], outputs
    return root


def metrics(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def row_of(stdout, session):
    lines = [line for line in stdout.splitlines() if line.startswith(f"| {session} |")]
    assert len(lines) == 1, stdout
    return lines[0]


def test_table_csv_and_plots_match_the_metrics_files(root, tmp_path):
    grafting, baseline = root / "grafting", root / "baseline"
    out = tmp_path / "table.csv"
    result = run_script(SUMMARIZE, grafting, "--baseline", baseline, "--csv", out)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    rows = {row["session"]: row for row in csv.DictReader(out.open())}
    assert set(rows) == {str(grafting), str(baseline)}

    lines = {i: metrics(grafting / f"metrics_{i}.jsonl") for i in (1, 2)}
    best = [max(r["test_acc"] for r in lines[i]) for i in (1, 2)]
    final = [lines[i][-1]["test_acc"] for i in (1, 2)]
    row = rows[str(grafting)]
    assert [float(row["best_1"]), float(row["best_2"])] == best
    assert [float(row["final_1"]), float(row["final_2"])] == final
    assert float(row["best_mean"]) == pytest.approx(np.mean(best))
    assert float(row["best_std"]) == pytest.approx(np.std(best, ddof=1), abs=1e-12)
    assert float(row["final_mean"]) == pytest.approx(np.mean(final))
    assert (row["networks"], row["epochs_done"], row["epochs_planned"], row["state"]) == ("2", "2", "2", "done")
    assert row["method"] == "grafting (slr)" and row["paper_top1"] == ""

    base_lines = metrics(baseline / "metrics_1.jsonl")
    base = rows[str(baseline)]
    assert float(base["best_1"]) == max(r["test_acc"] for r in base_lines) == base_lines[-1]["best_acc"]
    assert float(base["final_1"]) == base_lines[-1]["test_acc"] and base["best_2"] == ""
    assert base["method"] == "baseline" and base["best_std"] == ""

    md = row_of(result.stdout, grafting)
    assert f"| {best[0]:.2f} / {best[1]:.2f} |" in md and f"| {final[0]:.2f} / {final[1]:.2f} |" in md
    assert "| 2/2 |" in md
    assert f"| {base_lines[-1]['best_acc']:.2f} |" in row_of(result.stdout, baseline)

    printed = [line.strip() for line in result.stdout.split("plots:")[1].splitlines() if line.strip()]
    expected = [grafting / "plots" / f"{name}.png" for name in ("accuracy", "alpha", "entropy", "l1_norms")]
    expected += [baseline / "plots" / f"{name}.png" for name in ("accuracy", "l1_norms")]
    assert sorted(printed) == sorted(map(str, expected))
    for path in expected:
        image = imread(path)
        assert image.shape[0] > 200 and image.shape[1] > 300, path
        colours = np.unique(image.reshape(-1, image.shape[-1]), axis=0)
        assert len(colours) > 20, path


def test_graft_heatmap_and_histogram_data_come_from_the_session(root):
    session = read_session(root / "grafting")
    network = session.networks[0]
    names, epochs, alpha = graft_matrix(network, "alpha")
    records = metrics(root / "grafting" / "metrics_1.jsonl")
    assert epochs == [1, 2]
    for column, record in enumerate(records):
        layers = record["graft"]["layers"]
        assert names == [layer["name"] for layer in layers]
        assert alpha[:, column].tolist() == [layer["alpha"] for layer in layers]
    norms, _ = filter_norms(root / "grafting" / "best_1.t7")
    convs = [m for m in create_model("resnet20", 10).modules() if type(m).__name__ == "Conv2d"]
    assert norms.shape == (sum(m.out_channels for m in convs),) and (norms > 0).all()


def test_a_directory_holding_sessions_stands_for_all_of_them(root, tmp_path):
    sessions, skipped = find_sessions([root])
    assert sorted(s.path.name for s in sessions) == ["baseline", "grafting"] and skipped == []
    baseline, grafting = sorted(sessions, key=lambda s: s.path.name)
    other = variant(root / "baseline", tmp_path / "other", {"arch": "resnet32"})
    assert comparable_baselines(grafting, [baseline, other, grafting]) == [baseline]


def variant(source, target, changes):
    """A copy of a real session whose session.json is rewritten (a fabricated input, never an output)."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("plots", "exchange"))
    config = json.loads((target / "session.json").read_text())
    drop = [key for key, value in changes.items() if value is None]
    config.update({k: v for k, v in changes.items() if v is not None})
    for key in drop:
        config.pop(key, None)
    (target / "session.json").write_text(json.dumps(config))
    return read_session(target)


CIFAR = {"dataset": "cifar"}
MATCHING = [
    ("grafting", dict(arch="resnet32", num_classes=10, difflr=True, cos=True, **CIFAR), ["93.94"],
     "CIFAR grafting: ResNet32 C10 dlr"),
    ("grafting", dict(arch="resnet32", num_classes=10, **CIFAR), ["93.33"], "CIFAR grafting: ResNet32 C10 slr"),
    ("grafting", dict(arch="resnet110", num_classes=100, difflr=True, cos=True, **CIFAR), ["75.27"], "dlr"),
    ("baseline", dict(arch="resnet32", num_classes=10, **CIFAR), ["92.83"], "ResNet32 C10 baseline"),
    ("baseline", dict(arch="resnet56", num_classes=100, **CIFAR), ["71.55"], "ResNet56 C100 baseline"),
    # A number shared by two tables is shown once; a configuration in two tables gets both rows.
    ("grafting", dict(arch="mobilenetv2", num_classes=100, difflr=True, cos=True, **CIFAR), ["74.15"], "C100 dlr"),
    ("grafting", dict(arch="mobilenetv2", num_classes=10, **CIFAR), ["93.53", "92.94"], "scion sources"),
    ("grafting", dict(arch="mobilenetv2", num=4, num_classes=100, difflr=True, cos=True, **CIFAR), ["77.08"],
     "MobileNetV2 networks (dlr): C100 N=4"),
    ("baseline", dict(arch="mobilenetv2", source="noise", num_classes=10, **CIFAR), ["92.51"], "noise"),
    ("grafting", dict(arch="vgg16", level="filter", num_classes=10, **CIFAR), ["94.26"], "filter level"),
    ("grafting", dict(script="grafting_plus", arch="resnet32", num_classes=100, teachers=[
        {"arch": "resnet56", "checkpoint": "/t/best_1.t7"}], **CIFAR), ["72.69"], "ResNet56 → ResNet32 grafting+"),
    ("baseline", dict(script="grafting_plus", arch="mobilenetv2", num_classes=100, teachers=[
        {"arch": "resnet110", "checkpoint": "/t/best_1.t7"}], **CIFAR), ["74.98"], "distillation"),
    ("grafting", dict(script="grafting_imagenet", dataset="imagefolder", arch="resnet18", num_classes=1000,
                      cos=True), ["71.19"], "(top-5 90.01) [ImageNet: ResNet18 grafting]"),
]
NOT_MATCHING = [
    ("grafting", {}),  # digits
    ("grafting", dict(arch="resnet20", num_classes=10, **CIFAR)),  # not in the paper
    ("grafting", dict(arch="resnet32", num_classes=10, difflr=True, **CIFAR)),  # neither slr nor dlr
    ("grafting", dict(arch="resnet32", num_classes=10, difflr=None, cos=None, **CIFAR)),  # flags not recorded
    ("grafting", dict(arch="resnet32", num_classes=10, criterion="l1", **CIFAR)),
    ("grafting", dict(arch="resnet32", num_classes=10, num=3, **CIFAR)),
    ("baseline", dict(arch="resnet32", num_classes=10, cos=True, **CIFAR)),
    ("grafting", dict(arch="resnet32", num_classes=100, dataset="fake")),
    ("grafting", dict(script="grafting_imagenet", dataset="imagefolder", arch="resnet18", num_classes=1000,
                      pretrained=True)),
    ("grafting", dict(script="grafting_imagenet", dataset="imagefolder", arch="resnet18", num_classes=10)),
    ("grafting", dict(script="grafting_plus", arch="resnet32", num_classes=100, teachers=[
        {"arch": "resnet110", "checkpoint": "/t/best_1.t7"}], **CIFAR)),  # not the paper's teacher
]


@pytest.mark.parametrize("source, changes, values, label", MATCHING)
def test_the_paper_number_appears_for_a_matching_configuration(root, tmp_path, source, changes, values, label):
    session = variant(root / source, tmp_path / "s", changes)
    (row,) = csv_rows([session])
    assert row["paper_top1"].split() == values
    table = markdown([session])
    assert label in table and all(v in table for v in values)
    if "script" not in changes:  # CIFAR grafting rows: the paper trained 200 epochs
        assert "paper trained 200 epochs, this run 2" in row["notes"]


@pytest.mark.parametrize("source, changes", NOT_MATCHING)
def test_no_paper_number_for_other_configurations(root, tmp_path, source, changes):
    session = variant(root / source, tmp_path / "s", changes)
    (row,) = csv_rows([session])
    assert row["paper_top1"] == "" and row["paper_rows"] == ""
    if changes.get("difflr", 0) is None:
        assert "learning-rate flags not recorded" in row["notes"]


def stripe_dir(root, target, config):
    """A stripe-pruning directory made by hand: the baseline's metrics lines, prune.json, session.json."""
    target.mkdir()
    shutil.copy(root / "baseline" / "metrics_1.jsonl", target / "metrics.jsonl")
    prune = {"params": 4_000_000, "params_pruned": 1_000_000, "flops": 300e6, "flops_pruned": 120e6,
             "acc": 29.5, "acc_pruned": 29.5}
    (target / "prune.json").write_text(json.dumps(prune))
    (target / "session.json").write_text(json.dumps(config))
    return read_session(target)


def test_stripe_pruning_directories_report_reductions(root, tmp_path):
    vgg = stripe_dir(root, tmp_path / "vgg", {"arch": "VGG", "dataset": "cifar", "num_classes": 10, "sr": 1e-5,
                                              "threshold": 0.005, "epochs": 160})
    digits = stripe_dir(root, tmp_path / "digits", {"arch": "VGG", "dataset": "digits", "num_classes": 10,
                                                    "sr": 1e-5, "threshold": 0.005})
    rows = csv_rows([vgg, digits])
    assert rows[0]["params_reduction"] == pytest.approx(75.0) and rows[0]["flops_reduction"] == pytest.approx(60.0)
    assert rows[0]["best_1"] == max(r["test_acc"] for r in metrics(root / "baseline" / "metrics_1.jsonl"))
    assert rows[0]["paper_rows"].startswith("stripe pruning: VGG16 C10") and rows[1]["paper_rows"] == ""
    table = markdown([vgg, digits])
    assert "4.00M → 1.00M (−75.00 %)" in table and "−92.66 % params" in table
    assert "stripe pruning (sr 1e-05, threshold 0.005)" in table


def test_half_written_sessions_and_foreign_directories_are_reported_not_fatal(root, tmp_path):
    half = tmp_path / "half"
    shutil.copytree(root / "grafting", half, ignore=shutil.ignore_patterns("plots"))
    (half / "best_2.t7").unlink()
    text = (half / "metrics_2.jsonl").read_text()
    (half / "metrics_2.jsonl").write_text(text[: len(text) - len(text.splitlines()[-1]) // 2 - 1])
    empty, a_file = tmp_path / "empty", tmp_path / "notes.txt"
    empty.mkdir()
    a_file.write_text("hello")
    result = run_script(SUMMARIZE, half, empty, a_file, tmp_path / "missing", "--no-plots")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    err = result.stderr
    assert f"skipped {empty}: not a session directory" in err
    assert f"skipped {a_file}: not a directory" in err and f"skipped {tmp_path / 'missing'}" in err
    assert "metrics_2.jsonl: the last line is not complete JSON" in err and "best_2.t7 missing" in err
    first = metrics(root / "grafting" / "metrics_2.jsonl")[0]["test_acc"]
    best_1 = max(r["test_acc"] for r in metrics(half / "metrics_1.jsonl"))
    row = row_of(result.stdout, half)
    assert f"| {best_1:.2f} / {first:.2f} |" in row and "| 1–2/2 |" in row and "in progress" in row
    assert not (half / "plots").exists()


def test_nothing_readable_is_one_error_line(tmp_path):
    result = run_script(SUMMARIZE, tmp_path, "--no-plots")
    assert "none of the given directories is a readable session" in one_error_line(result)
    assert f"skipped {tmp_path}: not a session directory" in result.stderr


def dry_run(script, **env):
    result = subprocess.run(["bash", str(REPO / "scripts" / "reproduce" / script), "--amp"], capture_output=True,
                            text=True, timeout=30, env=script_env(DRY_RUN=1, RUNS="R", **env), cwd=REPO)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_reproduce_scripts_cover_the_paper_tables():
    cifar = dry_run("cifar_grafting.sh")
    assert len(cifar) == 24 and all(line.endswith("--amp") for line in cifar)
    for model in ("resnet32", "resnet56", "resnet110", "mobilenetv2"):
        for c in (10, 100):
            ours = [line for line in cifar if f"MODEL={model} CIFAR={c} " in line]
            assert [line.split()[0] for line in ours] == [f"S=R/{model}_c{c}_{kind}" for kind in
                                                          ("baseline", "slr", "dlr")]
            assert "baseline.sh" in ours[0] and "NUM=2" in ours[1] and "--difflr --cos" in ours[2]
            assert "--difflr" not in ours[1] and "--cos" not in ours[1]
    networks = dry_run("multiple_networks.sh")
    assert sorted(int(line.split("NUM=")[1].split()[0]) for line in networks) == [2, 2, 3, 3, 4, 4, 6, 6, 8, 8]
    assert all("MODEL=mobilenetv2" in line and "--difflr --cos" in line for line in networks)
    vgg = dry_run("vgg_levels.sh")
    assert len(vgg) == 6 and sum("--level filter" in line for line in vgg) == 2
    scions = dry_run("scion_sources.sh")
    assert sorted(line.split("_", 2)[2].split()[0] for line in scions) == sorted(
        ["baseline", "noise", "internal", "external"] * 2)
    imagenet = dry_run("imagenet.sh", DATA="/imagenet")  # per model: baseline (steps), grafting, cosine baseline
    assert len(imagenet) == 9 and sum("--steplr" in line for line in imagenet) == 3
    plus = dry_run("grafting_plus.sh")
    assert [line.split()[0] for line in plus] == ["S=R/resnet56_resnet32", "S=R/resnet110_resnet56",
                                                  "S=R/resnet110_mobilenetv2"]
    stripe = dry_run("stripe_pruning.sh")
    assert [line.split()[1] for line in stripe] == ["ARCH=VGG", "ARCH=ResNet56"]
