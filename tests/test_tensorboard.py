"""--tensorboard (filtergraft/board.py) on real tiny runs (digits, ResNet20 and the stripe VGG): the event
files, read back with TensorBoard's own reader, hold one scalar per epoch for every number of the metrics
lines and the graft's per-layer α as the metrics lines have it; summarize.py --tensorboard writes the same
from a session trained without the flag; resume continues the event files without repeating an epoch; and
without the tensorboard package the flag is one error line while runs without it still train. The package is
optional (a system's python may lack it): the tests that read event files are skipped without it."""
import importlib.util
import shutil
import subprocess

import pytest

from filtergraft.analysis import counted_convs
from filtergraft.board import BEST_FILTERS_TAG, FILTERS_TAG, scalars_of
from filtergraft.models import create_model
from filtergraft.session import read_jsonl
from filtergraft.stripe import FilterStripe
from helpers import PYTHON, REPO, one_error_line, run_ring, run_script, script_env

GRAFTING, STRIPE, SUMMARIZE = "grafting_cifar/grafting.py", "stripe_pruning/main.py", "scripts/summarize.py"
EPOCHS = 2
FLAGS = ["--dataset", "digits", "--model", "resnet20", "--workers", 0, "--batch-size", 256, "--seed", 0]
# Runs a script with the tensorboard package made unimportable, as on a machine without it.
WITHOUT_TENSORBOARD = ("import runpy, sys; sys.modules['tensorboard'] = None; sys.argv = sys.argv[1:]; "
                       "runpy.run_path(sys.argv[0], run_name='__main__')")
needs_tensorboard = pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                                       reason="the tensorboard package is not installed")


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """A 2-network grafting session with --tensorboard, both networks at once."""
    root = tmp_path_factory.mktemp("tensorboard") / "grafting"
    run_ring(GRAFTING, 2, "--num", 2, "--s", root, "--epochs", EPOCHS, *FLAGS, "--tensorboard", log_dir=root.parent)
    return root


def read_events(directory):
    """TensorBoard's reader over `directory`'s runs (one per subdirectory), every event kept."""
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    reader = EventMultiplexer(size_guidance={"scalars": 0, "histograms": 0})
    reader.AddRunsFromDirectory(str(directory))
    return reader.Reload()


def scalars(reader, run):
    """{tag: [(step, value)]} of one run."""
    return {tag: [(e.step, e.value) for e in reader.Scalars(run, tag)] for tag in reader.Runs()[run]["scalars"]}


def histograms(reader, run):
    """{tag: [(step, number of values, their sum, bucket counts)]} of one run."""
    return {tag: [(e.step, e.histogram_value.num, e.histogram_value.sum, list(e.histogram_value.bucket))
                  for e in reader.Histograms(run, tag)] for tag in reader.Runs()[run]["histograms"]}


def counted_filters(model):
    """The number of filters the histogram counts: those of the convs the papers count."""
    modules = dict(model.named_modules())
    return sum(modules[name].out_channels for name in counted_convs(model))


def test_tags_scheme_covers_every_number_of_a_metrics_line():
    record = {"epoch": 3, "lr": 0.1, "train_loss": 1.5, "train_kd": 0.2, "test_acc": 90.0, "test_acc5": 99.0,
              "test_acc_grafted": 89.0, "best_acc": 91.0, "epoch_time": 2.0, "stripes_kept": 0.5,
              "stripes_kept_layers": {"features.0": 0.25}, "time": "2025-01-01T00:00:00", "flag": True,
              "graft": {"source": "noise", "time": 0.01, "layers": [{"name": "conv1", "invalid": 3, "sigma": 0.9}]}}
    assert scalars_of(record) == {
        "lr": 0.1, "train/loss": 1.5, "train/kd": 0.2, "test/acc": 90.0, "test/acc5": 99.0,
        "test/acc_grafted": 89.0, "best_acc": 91.0, "epoch_time": 2.0, "stripes_kept": 0.5,
        "stripes_kept/features.0": 0.25, "graft/time": 0.01, "graft/invalid/conv1": 3, "graft/sigma/conv1": 0.9}


@needs_tensorboard
def test_every_network_has_one_scalar_per_epoch_and_the_grafts_alphas(session):
    reader = read_events(session / "tb")
    assert set(reader.Runs()) == {"1", "2"}  # tensorboard --logdir SESSION/tb: the networks side by side
    filters = counted_filters(create_model("resnet20"))
    for i in (1, 2):
        lines = read_jsonl(session / f"metrics_{i}.jsonl")
        assert [line["epoch"] for line in lines] == list(range(1, EPOCHS + 1))
        events = scalars(reader, str(i))
        layers = [layer["name"] for layer in lines[0]["graft"]["layers"]]
        per_layer = {f"graft/{key}/{name}" for key in ("alpha", "h_self", "h_peer") for name in layers}
        assert set(events) == {"lr", "train/loss", "train/acc", "test/loss", "test/acc", "best_acc", "epoch_time",
                               "graft/peer", "graft/time", "graft/wait_time"} | per_layer
        for tag, points in events.items():
            assert [step for step, _ in points] == list(range(1, EPOCHS + 1)), tag
        for line in lines:
            epoch = line["epoch"]
            assert events["test/acc"][epoch - 1][1] == pytest.approx(line["test_acc"], rel=1e-6)
            assert events["train/loss"][epoch - 1][1] == pytest.approx(line["train_loss"], rel=1e-6)
            for layer in line["graft"]["layers"]:
                assert events[f"graft/alpha/{layer['name']}"][epoch - 1] == (epoch, pytest.approx(layer["alpha"]))
        assert {step: num for step, num, _, _ in histograms(reader, str(i))[FILTERS_TAG]} == \
            {epoch: filters for epoch in range(1, EPOCHS + 1)}
    assert f"TensorBoard event files in {session / 'tb' / '1'}" in (session / "1.log").read_text()


@needs_tensorboard
def test_summarize_converts_a_session_written_without_event_files(session, tmp_path):
    copy = tmp_path / "grafting"
    shutil.copytree(session, copy, ignore=shutil.ignore_patterns("tb"))
    result = run_script(SUMMARIZE, copy, "--tensorboard", "--no-plots")
    assert result.returncode == 0, result.stderr
    assert f"  {copy / 'tb' / '1'}\n  {copy / 'tb' / '2'}" in result.stdout
    live, converted = read_events(session / "tb"), read_events(copy / "tb")
    filters = counted_filters(create_model("resnet20"))
    for run in ("1", "2"):
        assert scalars(converted, run) == scalars(live, run)
        written, drawn = histograms(live, run), histograms(converted, run)
        assert set(drawn) == {FILTERS_TAG, BEST_FILTERS_TAG}
        # The last checkpoint holds the weights of the live run's last histogram, the best one its best epoch.
        assert drawn[FILTERS_TAG] == written[FILTERS_TAG][-1:]
        lines = read_jsonl(session / f"metrics_{run}.jsonl")
        best_epoch = next(line["epoch"] for line in lines if line["test_acc"] == lines[-1]["best_acc"])
        assert [(step, num) for step, num, _, _ in drawn[BEST_FILTERS_TAG]] == [(best_epoch, filters)]

    again = run_script(SUMMARIZE, copy, "--tensorboard", "--no-plots")
    assert again.returncode == 0, again.stderr
    assert f"{copy / 'tb' / '1'} already holds event files; remove it to convert again" in again.stderr
    assert len(list((copy / "tb" / "1").iterdir())) == 1 and scalars(read_events(copy / "tb"), "1") == scalars(live, "1")


@needs_tensorboard
def test_resume_continues_the_event_files_without_repeating_an_epoch(tmp_path):
    run = tmp_path / "baseline"
    first = run_script(GRAFTING, "--num", 1, "--s", run, "--epochs", 1, *FLAGS, "--tensorboard")
    assert first.returncode == 0, first.stderr
    resumed = run_script(GRAFTING, "--num", 1, "--s", run, "--epochs", 2, *FLAGS, "--tensorboard", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert len(list((run / "tb" / "1").iterdir())) == 2
    events = scalars(read_events(run / "tb"), "1")
    lines = read_jsonl(run / "metrics_1.jsonl")
    assert events["test/acc"] == [(line["epoch"], pytest.approx(line["test_acc"])) for line in lines]
    assert all([step for step, _ in points] == [1, 2] for points in events.values())


@needs_tensorboard
def test_stripe_pruning_records_the_share_of_stripes_kept_per_layer(tmp_path):
    save = tmp_path / "stripe"
    result = run_script(STRIPE, "--dataset", "digits", "--arch", "VGG", "--epochs", 1, "--sr", 0.005, "--threshold",
                        0.5, "--workers", 0, "--batch-size", 256, "--seed", 0, "--save", save, "--tensorboard",
                        timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = read_jsonl(save / "metrics.jsonl")
    model = create_model("VGG", 10, kind="stripe")
    stripes = [name for name, module in model.named_modules() if isinstance(module, FilterStripe)]
    assert list(line["stripes_kept_layers"]) == stripes and len(stripes) == 13
    reader = read_events(save / "tb")
    assert set(reader.Runs()) == {"1"}
    events = scalars(reader, "1")
    for name in stripes:
        assert events[f"stripes_kept/{name}"] == [(1, pytest.approx(line["stripes_kept_layers"][name]))]
    assert events["stripes_kept"] == [(1, pytest.approx(line["stripes_kept"]))]
    filters = sum(module.out_channels for module in model.modules() if isinstance(module, FilterStripe))
    assert [(step, num) for step, num, _, _ in histograms(reader, "1")[FILTERS_TAG]] == [(1, filters)]


def run_without_tensorboard(script, *args):
    return subprocess.run([PYTHON, "-c", WITHOUT_TENSORBOARD, str(REPO / script), *map(str, args)],
                          capture_output=True, text=True, timeout=300, env=script_env(), cwd=REPO)


def test_without_tensorboard_the_flag_is_one_error_line(tmp_path):
    run = tmp_path / "baseline"
    refused = run_without_tensorboard(GRAFTING, "--num", 1, "--s", run, "--epochs", 1, *FLAGS, "--tensorboard")
    line = one_error_line(refused)
    assert line.startswith("grafting.py: error: --tensorboard needs the tensorboard package") and \
        "pip install tensorboard" in line
    assert not (run / "session.json").exists() and not (run / "tb").exists()
    # summarize.py refuses before it reads anything, so any directory shows it.
    line = one_error_line(run_without_tensorboard(SUMMARIZE, tmp_path, "--tensorboard", "--no-plots"))
    assert line.startswith("summarize.py: error: --tensorboard needs") and "pip install tensorboard" in line

    # The dependency stays optional: a run without the flag never imports it.
    trained = run_without_tensorboard(GRAFTING, "--num", 1, "--s", run, "--epochs", 1, *FLAGS)
    assert trained.returncode == 0, trained.stderr
    assert len(read_jsonl(run / "metrics_1.jsonl")) == 1 and not (run / "tb").exists()
