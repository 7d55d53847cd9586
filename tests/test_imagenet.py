"""The ImageNet grafting script on a small ImageFolder of real images (scikit-learn's digits as PNG files):
a ring of two torchvision ResNet18s through grafting.sh, resume, -e, the per-layer graft of a shortcut
conv recomputed from the exchange files, and every bad input ending in one clear line."""
import importlib.util
import json
import math
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from filtergraft.data import digits_arrays
from filtergraft.errors import UserError
from filtergraft.grafting import graft_units
from filtergraft.session import read_jsonl
from helpers import REPO, assert_run_record, one_error_line, run_script, run_shell, script_env

SCRIPT = "grafting_imagenet/grafting.py"
# Small crops keep a ResNet18 epoch over 40 images at a few seconds on one CPU thread.
SMALL = ["-j", "0", "-b", "16", "--crop-size", "64", "--resize-size", "72", "--lr", "0.01", "-p", "2"]
SHORTCUT = "layer2.0.downsample.0"


def metrics(session, index):
    return read_jsonl(session / f"metrics_{index}.jsonl")


def assert_top5_at_least_top1(lines):
    for line in lines:
        assert 0 <= line["test_acc"] <= line["test_acc5"] <= 100, line


def entropy(values, bins=10):
    """H = −Σ p_k log p_k as the release bins (SPEC §3, the default): bins [min + k·s, min + (k+1)·s) in
    float32, s = (max − min)/10, p_k over all values."""
    values = values.astype(np.float32)
    low, step = values.min(), (values.max() - values.min()) / np.float32(bins)
    edges = [low + np.float32(k) * step for k in range(bins + 1)]
    counts = np.array([np.count_nonzero((values >= edges[k]) & (values < edges[k + 1])) for k in range(bins)])
    p = counts[counts > 0] / values.size
    return float(-(p * np.log(p)).sum())


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """10 classes x 4 training and 2 validation digits, 32x32 PNG, written by scripts/make_imagefolder.py."""
    out = tmp_path_factory.mktemp("imagenet") / "digits"
    result = run_script("scripts/make_imagefolder.py", out, "--size", 32, "--per-class-train", 4, "--per-class-val", 2)
    assert result.returncode == 0, result.stderr
    assert "wrote 40 training and 20 validation images of 10 classes" in result.stdout
    return out


@pytest.fixture(scope="module")
def ring(folder, tmp_path_factory):
    """A session of two ResNet18s grafting for one epoch, launched by grafting.sh."""
    session = tmp_path_factory.mktemp("imagenet") / "ring"
    env = script_env(ARCH="resnet18", NUM=2, DATA=folder, S=session, EPOCHS=1)
    result = run_shell("grafting_imagenet/grafting.sh", *SMALL, "--seed", 0, env=env, timeout=240)
    assert result.returncode == 0, result.stdout + "".join((session / f"{i}.out").read_text() for i in (1, 2))
    return session, result


def test_make_imagefolder_writes_the_digits_as_png(folder):
    (_, _), (x_val, y_val) = digits_arrays()
    for split, count in (("train", 4), ("val", 2)):
        assert sorted(p.name for p in (folder / split).iterdir()) == [str(c) for c in range(10)]
        assert all(len(list((folder / split / str(c)).glob("*.png"))) == count for c in range(10))
    first_seven = int(np.flatnonzero(np.asarray(y_val) == 7)[0])
    png = np.asarray(Image.open(folder / "val" / "7" / f"{first_seven:04d}.png"))
    assert png.shape == (32, 32, 3) and np.array_equal(png, x_val[first_seven])


def test_two_resnet18s_graft_through_grafting_sh(ring):
    session, result = ring
    assert "network 1: exit 0" in result.stdout and "network 2: exit 0" in result.stdout
    config = json.loads((session / "session.json").read_text())
    assert (config["script"], config["arch"], config["num"], config["num_classes"]) == ("grafting_imagenet",
                                                                                       "resnet18", 2, 10)
    assert_run_record(session, seed=0, weight_decay=1e-4)
    for index, peer in ((1, 2), (2, 1)):
        [line] = metrics(session, index)
        assert {"epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "test_acc5", "best_acc",
                "epoch_time", "graft"} <= set(line)
        assert line["epoch"] == 1 and line["graft"]["peer"] == peer
        assert_top5_at_least_top1([line])
        assert (session / f"best_{index}.t7").exists() and (session / f"last_{index}.t7").exists()


def test_every_conv_and_linear_of_resnet18_gets_its_own_alpha(ring):
    session, _ = ring
    layers = {layer["name"]: layer for layer in metrics(session, 1)[0]["graft"]["layers"]}
    reference = torchvision.models.resnet18(num_classes=10)
    expected = [name for name, m in reference.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert list(layers) == expected and SHORTCUT in layers

    # Recompute the shortcut conv's graft from the pre-graft weights both networks left in exchange/.
    own = torch.load(session / "exchange" / "net1_epoch1.t7", weights_only=True)["net"]
    peer = torch.load(session / "exchange" / "net2_epoch1.t7", weights_only=True)["net"]
    grafted = torch.load(session / "last_1.t7", weights_only=True)["net"]
    record = layers[SHORTCUT]
    h_self = entropy(own[f"{SHORTCUT}.weight"].numpy().ravel())
    h_peer = entropy(peer[f"{SHORTCUT}.weight"].numpy().ravel())
    assert record["h_self"] == pytest.approx(h_self, abs=1e-4)
    assert record["h_peer"] == pytest.approx(h_peer, abs=1e-4)
    assert record["alpha"] == round(0.4 / math.pi * math.atan(500 * (record["h_self"] - record["h_peer"])) + 0.5, 2)
    alpha = record["alpha"]
    # The conv and the BatchNorm after it (layer2.0.downsample.1) are mixed with the conv's own α.
    for key in (f"{SHORTCUT}.weight", "layer2.0.downsample.1.weight", "layer2.0.downsample.1.bias",
                "layer2.0.downsample.1.running_mean", "layer2.0.downsample.1.running_var"):
        torch.testing.assert_close(grafted[key], alpha * own[key] + (1 - alpha) * peer[key])
    assert torch.equal(grafted["layer2.0.downsample.1.num_batches_tracked"],
                       own["layer2.0.downsample.1.num_batches_tracked"])


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_downsample_convs_pair_with_their_batchnorm(arch):
    units = {unit.name: unit for unit in graft_units(torchvision.models.get_model(arch, num_classes=10))}
    shortcuts = [name for name in units if name.endswith("downsample.0")]
    assert len(shortcuts) == (3 if arch == "resnet18" else 4)
    for name in shortcuts:
        assert units[name].norm == name[:-1] + "1"


def test_evaluate_reports_the_best_checkpoints_accuracy(ring, folder):
    session, _ = ring
    result = run_script(SCRIPT, "--data", folder, *SMALL, "-e", "--resume", session / "best_1.t7")
    assert result.returncode == 0, result.stderr
    top1, top5 = map(float, re.search(r"top-1 ([\d.]+)% top-5 ([\d.]+)%", result.stdout).groups())
    best = torch.load(session / "best_1.t7", weights_only=True)
    [line] = [m for m in metrics(session, 1) if m["epoch"] == best["epoch"]]
    assert top1 == pytest.approx(best["acc"], abs=0.006) and top1 == pytest.approx(line["test_acc"], abs=0.006)
    assert top5 == pytest.approx(line["test_acc5"], abs=0.006) and top5 >= top1


def test_resume_from_a_path_continues_in_a_new_session(ring, folder, tmp_path):
    session, _ = ring
    before = metrics(session, 1)[0]
    out = tmp_path / "continued"
    result = run_script(SCRIPT, "--data", folder, *SMALL, "--epochs", 2, "--resume", session / "last_1.t7",
                        "--s", out, "--steplr")  # a flat rate, so that it says the schedule came along
    assert result.returncode == 0, result.stderr
    *earlier, line = metrics(out, 1)
    assert all(m["epoch"] < 2 for m in earlier)
    assert line["epoch"] == 2 and line["lr"] == pytest.approx(0.01) and "graft" not in line
    assert line["best_acc"] >= before["best_acc"]  # the best accuracy came along with the weights
    assert_top5_at_least_top1([line])
    assert f"resumed from {session / 'last_1.t7'}" in (out / "1.log").read_text()
    assert metrics(session, 1) == [before]


@pytest.mark.parametrize("flags", [[], ["--steplr"]], ids=["cosine", "steplr"])
def test_the_schedule_is_the_releases_cosine_unless_steplr(folder, tmp_path, flags):
    """The release's grafting script anneals every iteration; --steplr keeps ×0.1 every 30 epochs."""
    result = run_script(SCRIPT, "--data", folder, *SMALL, "--epochs", 2, "-p", 1, "--s", tmp_path, *flags)
    assert result.returncode == 0, result.stderr
    epochs = [m["lr"] for m in metrics(tmp_path, 1)]
    lines = [line.split(" ", 1)[1] for line in (tmp_path / "1.log").read_text().splitlines()]  # after the time
    steps = [float(line.rsplit("lr ", 1)[1]) for line in lines if line.startswith("epoch 1 [")]
    assert epochs[0] == pytest.approx(0.01) and len(steps) == 3  # 40 images, batches of 16
    if flags:
        assert epochs[1] == pytest.approx(0.01) and steps == [pytest.approx(0.01)] * 3
    else:
        assert 0 < epochs[1] < epochs[0] and steps == sorted(steps, reverse=True) and steps[0] > steps[-1]


def test_resume_continues_the_ring(ring, folder, tmp_path):
    session = tmp_path / "ring"
    shutil.copytree(ring[0], session, ignore=shutil.ignore_patterns("exchange"))
    first = [metrics(session, i)[0] for i in (1, 2)]
    env = script_env(ARCH="resnet18", NUM=2, DATA=folder, S=session, EPOCHS=2)
    result = run_shell("grafting_imagenet/grafting.sh", *SMALL, "--seed", 0, "--resume", env=env, timeout=240)
    assert result.returncode == 0, result.stdout + "".join((session / f"{i}.out").read_text() for i in (1, 2))
    for index, peer in ((1, 2), (2, 1)):
        lines = metrics(session, index)
        assert [m["epoch"] for m in lines] == [1, 2] and lines[0] == first[index - 1]
        assert lines[1]["graft"]["peer"] == peer
        assert_top5_at_least_top1(lines)
    assert sorted(p.name for p in (session / "exchange").glob("*.t7")) == ["net1_epoch2.t7", "net2_epoch2.t7"]


def _data(root, classes=("a", "b"), val=True, empty=(), corrupt=None):
    """A tiny ImageFolder: one 32x32 image per class folder, minus the `empty` ones, plus a corrupt file."""
    image = Image.fromarray(np.full((32, 32, 3), 128, np.uint8))
    for split in ("train", "val") if val else ("train",):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            if name not in empty:
                image.save(root / split / name / "0.png")
    if corrupt:
        (root / "train" / classes[0] / corrupt).write_bytes(b"not a png")
    return root


def load_script(path):
    """A script as a module, to call its main(argv) in this process."""
    spec = importlib.util.spec_from_file_location(f"script_{Path(path).stem}_{len(path)}", REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bad_inputs_end_in_one_line(ring, folder, tmp_path):
    """Each bad input in its own process: one 'error:' line, non-zero exit, nothing written."""
    last = ring[0] / "last_1.t7"
    cases = {
        "no val/": (["--data", _data(tmp_path / "noval", val=False)], "has no val/ folder"),
        "empty class": (["--data", _data(tmp_path / "empty", empty=("b",))], "Found no valid file for the classes b"),
        # A worker process reads the corrupt file: its error must still arrive as one line.
        "corrupt image": (["--data", _data(tmp_path / "corrupt", corrupt="1.png"), "-j", "1"],
                          f"cannot read image {tmp_path / 'corrupt' / 'train' / 'a' / '1.png'} "),
        "unknown arch": (["--data", folder, "-a", "resnet_nope"], "unknown --arch 'resnet_nope'; torchvision's"),
        "other arch": (["--data", folder, "-a", "resnet34", "--resume", last], "written for arch='resnet18'"),
    }
    sessions = {name: tmp_path / f"session_{index}" for index, name in enumerate(cases)}

    def attempt(name):
        return run_script(SCRIPT, *SMALL, *cases[name][0], "--s", sessions[name])

    with ThreadPoolExecutor(max_workers=2) as pool:  # two cores: two processes at a time
        results = dict(zip(cases, pool.map(attempt, cases)))
    for name, result in results.items():
        line = one_error_line(result)
        assert cases[name][1] in line, (name, line)
        assert name == "corrupt image" or not sessions[name].exists(), name
    assert "error: cannot read image" in (sessions["corrupt image"] / "1.log").read_text()


def test_more_bad_inputs_raise_user_errors(ring, folder, tmp_path, monkeypatch):
    """Further refusals, through the scripts' main() in this process (the path to one line is the same)."""
    imagenet = load_script(SCRIPT)
    bare = tmp_path / "bare.pt"
    torch.save(torchvision.models.resnet18(num_classes=5).state_dict(), bare)
    last = ring[0] / "last_1.t7"
    cached = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache: no pretrained weights there
    cases = {
        "missing resume": (["--resume", tmp_path / "nope.t7"], "nope.t7 does not exist"),
        "other shapes": (["-e", "--resume", bare], "fc.weight is (5, 512), expected (10, 512)"),
        "best is not resumable": (["--epochs", 2, "--resume", ring[0] / "best_1.t7"], "not a resumable checkpoint"),
        "start epoch": (["--epochs", 3, "--resume", last, "--start-epoch", 3], "continues at epoch 2"),
        "finished": (["--epochs", 1, "--resume", last], "has finished all 1 epochs"),
        "pretrained not cached": (["--pretrained", "-e"], f"download {torchvision.models.ResNet18_Weights.DEFAULT.url} "
                                                          f"to {cached} first"),
    }
    for name, (flags, expected) in cases.items():
        out = tmp_path / name.replace(" ", "_")
        with pytest.raises(UserError) as caught:
            imagenet.main([*map(str, [*SMALL, "--data", folder, *flags, "--s", out])])
        assert expected in str(caught.value) and "\n" not in str(caught.value), name
        assert not out.exists(), name
    with pytest.raises(UserError, match="not an empty folder"):
        load_script("scripts/make_imagefolder.py").main([str(folder), "--per-class-train", "1"])
    assert len(list((folder / "train" / "0").glob("*.png"))) == 4
