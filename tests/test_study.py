"""The study (scripts/study/run.sh): a tiny run of every stage (2 seeds, 1 epoch) whose report's statistics
are recomputed here from the files it read (metrics lines, checkpoints, prune.json), a rerun that trains
nothing, and a stopped study continued without retraining the session it finished."""
import json
import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
import torch

from filtergraft.results.study import stripe_rows
from helpers import REPO, one_error_line, run_shell, script_env

T_975_DF1 = 12.706204736174698  # Student's t quantile 0.975 at 1 degree of freedom (2 seeds)
# Each code path once: one- and two-network sessions, both references, two grafting+ rows, one --sr.
TINY = dict(SEEDS=2, EPOCHS=1, MODEL="resnet20", TEACHER="resnet20", TEACHER_EPOCHS=1, STRIPE_EPOCHS=1,
            STRIPE_ARCHS="ResNet56", SRS="0.01",
            THRESHOLD="0.05", SHAPE_ARCH="ResNet56", GRAFTING_RUNS="baseline baseline_cos dlr",
            PLUS_ROWS="baseline grafting+")
SEEDS = (1, 2)


def study_env(root, **extra):
    return script_env(STUDY=root, **{**TINY, **extra})


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study") / "digits"
    result = run_shell("scripts/study/run.sh", env=study_env(root), timeout=1200)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return root, json.loads((root / "summary.json").read_text()), (root / "report.md").read_text()


def accuracies(path):
    return [json.loads(line)["test_acc"] for line in path.read_text().splitlines()]


def seed_value(session, metric, metrics_name="metrics_{i}.jsonl"):
    """The mean over the session's networks of their best (max) or final (last) test top-1."""
    values = []
    for i in range(1, 4):
        path = session / metrics_name.format(i=i)
        if path.is_file():
            accs = accuracies(path)
            values.append(max(accs) if metric == "best" else accs[-1])
    assert values, session
    return float(np.mean(values))


def expected_spread(values):
    return np.mean(values), np.std(values, ddof=1)


def expected_difference(values, reference):
    diffs = np.array(values) - np.array(reference)
    half = T_975_DF1 * np.std(diffs, ddof=1) / np.sqrt(len(diffs))
    return diffs.mean(), diffs.mean() - half, diffs.mean() + half


def check_accuracy_rows(rows, root, baseline, metrics_name="metrics_{i}.jsonl"):
    by_method = {row["method"]: row for row in rows}
    for metric in ("best", "final"):
        reference = [seed_value(root / f"seed{s}" / baseline, metric, metrics_name) for s in SEEDS]
        for method, row in by_method.items():
            values = [seed_value(root / f"seed{s}" / method, metric, metrics_name) for s in SEEDS]
            mean, std = expected_spread(values)
            assert row[metric]["n"] == 2
            assert row[metric]["mean"] == pytest.approx(mean, abs=1e-9)
            assert row[metric]["std"] == pytest.approx(std, abs=1e-9)
            if method != baseline:
                d_mean, low, high = expected_difference(values, reference)
                got = row[f"{metric}_vs_{baseline}"]
                assert (got["mean"], got["low"], got["high"]) == pytest.approx((d_mean, low, high), abs=1e-6)
    return by_method


def test_grafting_statistics_recomputed_from_the_metrics_files(study):
    root, summary, report = study
    rows = check_accuracy_rows(summary["grafting"], root / "grafting", "baseline")
    assert set(rows) == {"baseline", "baseline_cos", "dlr"}
    assert [rows[m]["networks"] for m in ("baseline", "baseline_cos", "dlr")] == [[1], [1], [2]]
    # the cosine baseline as a second reference for the cosine runs
    cos = [seed_value(root / "grafting" / f"seed{s}" / "baseline_cos", "best") for s in SEEDS]
    dlr = [seed_value(root / "grafting" / f"seed{s}" / "dlr", "best") for s in SEEDS]
    got = rows["dlr"]["best_vs_baseline_cos"]
    assert (got["mean"], got["low"], got["high"]) == pytest.approx(expected_difference(dlr, cos), abs=1e-6)
    # the report prints the same numbers
    best = rows["dlr"]["best"]
    assert f"{best['mean']:.2f} ± {best['std']:.2f}" in report
    d = rows["dlr"]["best_vs_baseline"]
    assert f"{d['mean']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]" in report
    assert (root / "plots" / "grafting.png").stat().st_size > 0


def filter_norms(checkpoint):
    """L1 norm of every conv filter of a CIFAR ResNet checkpoint (option A shortcuts: every conv counts)."""
    state = torch.load(checkpoint, weights_only=True)
    state = state.get("state_dict", state.get("net", state))
    return np.concatenate([w.abs().flatten(1).sum(1).numpy() for k, w in state.items()
                           if k.endswith("weight") and w.dim() == 4])


def test_invalid_filter_counts_recomputed_from_the_checkpoints(study):
    root, summary, report = study
    invalid = summary["invalid_filters"]
    pooled = np.concatenate([filter_norms(root / "grafting" / f"seed{s}" / "baseline" / "best_1.t7") for s in SEEDS])
    for p in (5, 10):
        threshold = np.percentile(pooled, p)
        assert invalid["thresholds"][str(p)] == pytest.approx(threshold, rel=1e-6)
        for row in invalid["rows"]:
            session = root / "grafting"
            counts = [np.mean([(filter_norms(c) < threshold).sum()
                               for c in sorted((session / f"seed{s}" / row["method"]).glob("best_*.t7"))])
                      for s in SEEDS]
            mean, std = expected_spread(counts)
            assert row[f"p{p}"]["mean"] == pytest.approx(mean) and row[f"p{p}"]["std"] == pytest.approx(std)
    assert "Invalid filters" in report and f"{invalid['thresholds']['5']:.4g}" in report


def test_grafting_plus_stripe_and_shape_rows_recomputed(study):
    root, summary, report = study
    rows = check_accuracy_rows(summary["grafting_plus"], root / "plus", "baseline")
    assert set(rows) == {"baseline", "grafting+"}
    assert summary["teacher_best"] == max(accuracies(root / "plus" / "teacher" / "metrics_1.jsonl"))
    check_accuracy_rows(summary["shape"], root / "shape" / "ResNet56", "control", metrics_name="metrics.jsonl")

    stripe = {row["run"]: row for row in summary["stripe"]["ResNet56"]}
    assert set(stripe) == {"baseline", "sr0.01"}
    prune = {run: [json.loads((root / "stripe" / "ResNet56" / f"seed{s}" / run / "prune.json").read_text())
                   for s in SEEDS] for run in stripe}
    for run, row in stripe.items():
        for metric, key in (("params", "params"), ("flops", "flops"), ("acc", "acc_pruned")):
            values = [p[key] if metric == "acc" else 100 * (1 - p[f"{key}_pruned"] / p[key]) for p in prune[run]]
            mean, std = expected_spread(values)
            assert row[metric]["mean"] == pytest.approx(mean, abs=1e-9)
            assert row[metric]["std"] == pytest.approx(std, abs=1e-9)
    got = stripe["sr0.01"]["acc_vs_baseline"]
    expected = expected_difference([p["acc_pruned"] for p in prune["sr0.01"]],
                                   [p["acc_pruned"] for p in prune["baseline"]])
    assert (got["mean"], got["low"], got["high"]) == pytest.approx(expected, abs=1e-6)
    assert "Shape only" in report and "Not run" not in report
    assert (root / "plots" / "stripe.png").stat().st_size > 0


def test_stripe_reductions_are_the_percentages_of_the_counts(study, tmp_path):
    """A run that pruned (its prune.json doctored to keep a quarter of the parameters and a tenth of the
    FLOPs, as the release counts them): the report's reductions are 75 % and 90 %, from the counts."""
    root, _, _ = study
    copy = tmp_path / "ResNet56"
    shutil.copytree(root / "stripe" / "ResNet56", copy)
    for seed in SEEDS:
        path = copy / f"seed{seed}" / "sr0.01" / "prune.json"
        pruned = json.loads(path.read_text())
        pruned.update(params_pruned=pruned["params"] // 4, flops_pruned=pruned["flops"] // 10)
        for key in ("params", "flops"):
            pruned[f"{key}_reduction"] = 100 * (1 - pruned[f"{key}_pruned"] / pruned[key])  # as stripe/report.py
        path.write_text(json.dumps(pruned))
    rows = {row["run"]: row for row in stripe_rows(copy, "ResNet56", [])}
    assert rows["sr0.01"]["params"]["mean"] == pytest.approx(75, abs=0.01)
    assert rows["sr0.01"]["flops"]["mean"] == pytest.approx(90, abs=0.01)


def test_a_rerun_trains_nothing_and_other_settings_are_refused(study):
    root = study[0]
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in root.rglob("metrics*.jsonl")}
    result = run_shell("scripts/study/run.sh", env=study_env(root), timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "started" not in result.stdout and "trained before, kept" in result.stdout, result.stdout
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in root.rglob("metrics*.jsonl")} == before

    refused = run_shell("scripts/study/run.sh", env=study_env(root, EPOCHS=2), timeout=60)
    assert refused.returncode == 2 and "EPOCHS=1 (now 2)" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


def test_an_unknown_stage_is_refused_with_one_line(tmp_path):
    line = one_error_line(run_shell("scripts/study/run.sh", "grafitng", env=study_env(tmp_path / "s"), timeout=60))
    assert "no stage 'grafitng'" in line
    assert not (tmp_path / "s").exists()


def test_a_stopped_study_resumes_without_retraining_a_finished_session(tmp_path):
    root = tmp_path / "s"
    env = study_env(root, SEEDS=1, STRIPE_EPOCHS=2, LANES=1)
    proc = subprocess.Popen(["bash", str(REPO / "scripts/study/run.sh"), "shape"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO, start_new_session=True)
    first = root / "shape" / "ResNet56" / "seed1" / "skeleton"
    second = root / "shape" / "ResNet56" / "seed1" / "control"
    try:
        deadline = time.monotonic() + 400
        while not ((second / "metrics.jsonl").is_file() and (second / "metrics.jsonl").read_text().strip()):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=90)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 143, output
    assert (first / "prune.json").is_file() and not (second / "prune.json").is_file()
    kept = {p: p.stat().st_mtime_ns for p in first.iterdir()}

    result = run_shell("scripts/study/run.sh", "shape", env=env, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "shape_s1: trained before, kept" in result.stdout and "shape_control_s1: started" in result.stdout
    assert {p: p.stat().st_mtime_ns for p in first.iterdir()} == kept
    assert (second / "prune.json").is_file()
    epochs = [json.loads(line)["epoch"] for line in (second / "metrics.jsonl").read_text().splitlines()]
    assert sorted(set(epochs)) == [1, 2] and epochs[-1] == 2
    assert "resumed from" in (second / "train.log").read_text()
    calls = [json.loads(line) for line in (root / "invocations.jsonl").read_text().splitlines()]
    assert len(calls) == 2 and all(c["stages"] == "shape" for c in calls)
