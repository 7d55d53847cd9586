"""Grafting sessions on digits checked against the release's arithmetic, recomputed here from the session's
files: exchange/net<i>_epoch<e>.t7 (each network's pre-graft weights of the final epoch), the final metrics
line's graft.layers, and last_<i>.t7 (the post-graft weights)."""
import math
import re

import numpy as np
import pytest
import torch

from filtergraft.session import read_jsonl
from helpers import run_ring

SCRIPT = "grafting_cifar/grafting.py"
DIGITS = ("--dataset", "digits", "--workers", "0", "--batch-size", "256", "--seed", "0", "--graft-timeout", "600")
BN_TENSORS = ("weight", "bias", "running_mean", "running_var")


def release_entropy(values):
    """SPEC §3 in NumPy float32 scalars: bounds min + k·s (product, then sum), n over all values."""
    x = values.float().numpy().ravel()
    low, high = x.min(), x.max()
    step = (high - low) / np.float32(10)
    h = np.float32(0)
    for k in range(10):
        count = np.count_nonzero((x >= low + np.float32(k) * step) & (x < low + np.float32(k + 1) * step))
        if count:
            p = np.float32(count) / np.float32(x.size)
            h = h - p * np.log(p)
    return float(h)


def release_alpha(h_self, h_peer, a=0.4, c=500.0):
    return round(a / math.pi * math.atan(c * (h_self - h_peer)) + 0.5, 2)


def run_session(root, name, num, epochs, *flags):
    session = root / name
    session.mkdir()
    run_ring(SCRIPT, num, *DIGITS, "--epochs", epochs, "--num", num, "--s", session, *flags, log_dir=root,
             log_prefix=f"{name}_", timeout=900)
    return session


class Session:
    """The files of a finished 2-network session at its final epoch."""

    def __init__(self, path, epoch):
        self.path = path
        self.pre = {i: torch.load(path / "exchange" / f"net{i}_epoch{epoch}.t7", weights_only=True)["net"]
                    for i in (1, 2)}
        self.post = {i: torch.load(path / f"last_{i}.t7", weights_only=True)["net"] for i in (1, 2)}
        self.graft = {i: read_jsonl(path / f"metrics_{i}.jsonl")[-1]["graft"] for i in (1, 2)}
        assert all(read_jsonl(path / f"metrics_{i}.jsonl")[-1]["epoch"] == epoch for i in (1, 2))

    def log(self, i):
        return (self.path / f"{i}.log").read_text()


@pytest.fixture(scope="module")
def sessions(tmp_path_factory):
    root = tmp_path_factory.mktemp("fidelity")
    return {"resnet20": Session(run_session(root, "resnet20", 2, 2, "--model", "resnet20"), 2),
            "filter": Session(run_session(root, "filter", 2, 1, "--model", "vgg11", "--level", "filter"), 1),
            "conv_only": Session(run_session(root, "conv_only", 2, 1, "--model", "vgg11", "--conv-only"), 1)}


def check_logged_layer(layer, own, peer):
    """The layer's logged entropies are the release's of the two pre-graft weights, and its α their coefficient."""
    w_self, w_peer = own[f"{layer['name']}.weight"], peer[f"{layer['name']}.weight"]
    assert layer["h_self"] == pytest.approx(release_entropy(w_self), rel=1e-6, abs=1e-7)
    assert layer["h_peer"] == pytest.approx(release_entropy(w_peer), rel=1e-6, abs=1e-7)
    assert layer["alpha"] == release_alpha(layer["h_self"], layer["h_peer"])
    return layer["alpha"]


def mix(coef, own, peer):
    return coef * own + (1 - coef) * peer


def resnet20_groups(state):
    """{layer: tensors mixed with its α}: every conv with the BatchNorm of the same number, the classifier."""
    groups = {}
    for key in state:
        match = re.fullmatch(r"(.*)conv(\d)\.weight", key)
        if match:
            bn = f"{match[1]}bn{match[2]}"
            groups[key[:-len(".weight")]] = [key] + [f"{bn}.{t}" for t in BN_TENSORS]
    groups["linear"] = ["linear.weight", "linear.bias"]
    return groups


def test_resnet20_default_graft_is_the_releases_every_tensor_with_its_layers_alpha(sessions):
    s = sessions["resnet20"]
    for i, p in ((1, 2), (2, 1)):
        assert s.graft[i]["peer"] == p
        groups = resnet20_groups(s.pre[i])
        logged = {layer["name"]: layer for layer in s.graft[i]["layers"]}
        assert set(logged) == set(groups)
        checked = set()
        for name, keys in groups.items():
            alpha = check_logged_layer(logged[name], s.pre[i], s.pre[p])
            for key in keys:
                torch.testing.assert_close(s.post[i][key], mix(alpha, s.pre[i][key], s.pre[p][key]))
                checked.add(key)
        floating = {k for k, v in s.pre[i].items() if v.is_floating_point()}
        assert checked == floating  # the CIFAR script mixes every floating tensor
        for key in set(s.pre[i]) - floating:
            assert torch.equal(s.post[i][key], s.pre[i][key])
    assert "release bins" in s.log(1) and "keeps its own: nothing" in s.log(1)


def vgg_convs(state):
    """Indices of the conv layers of a VGG's `features`, in order (the BatchNorm after conv n is n + 1)."""
    return sorted(int(k.split(".")[1]) for k, v in state.items() if k.startswith("features.") and v.dim() == 4)


def assert_own(s, i, keys):
    for key in keys:
        assert torch.equal(s.post[i][key], s.pre[i][key]), key


def kept_by_vgg(state):
    return [f"features.{n}.bias" for n in vgg_convs(state)] + ["classifier.weight", "classifier.bias"]


def test_vgg_filter_level_mixes_element_jk_with_the_product_of_its_channels_coefficients(sessions):
    s = sessions["filter"]
    for i, p in ((1, 2), (2, 1)):
        own, peer, after = s.pre[i], s.pre[p], s.post[i]
        convs = vgg_convs(own)
        w = {}
        for n in convs:
            g_self, g_peer = own[f"features.{n + 1}.weight"].abs(), peer[f"features.{n + 1}.weight"].abs()
            w[n] = g_self / (g_self + g_peer)
        logged = {layer["name"]: layer["alpha"] for layer in s.graft[i]["layers"]}
        assert set(logged) == {f"features.{n}" for n in convs}
        for t, n in enumerate(convs):
            coef = w[n].view(-1, 1, 1, 1) * (w[convs[t - 1]].view(1, -1, 1, 1) if t else 1.0)
            key = f"features.{n}.weight"
            torch.testing.assert_close(after[key], mix(coef, own[key], peer[key]))
            mean = float(coef.double().expand_as(own[key]).mean())  # the logged α of a filter-level layer
            assert logged[f"features.{n}"] == pytest.approx(mean, rel=1e-6)
            for tensor in BN_TENSORS:
                key = f"features.{n + 1}.{tensor}"
                torch.testing.assert_close(after[key], mix(w[n], own[key], peer[key]))
        assert_own(s, i, kept_by_vgg(own))
    assert "keeps its own: 10 tensors (8 conv biases, 1 linear weight, 1 linear bias)" in s.log(1)


def test_vgg_conv_only_layer_level_mixes_convs_and_their_batchnorms_alone(sessions):
    s = sessions["conv_only"]
    for i, p in ((1, 2), (2, 1)):
        own, peer, after = s.pre[i], s.pre[p], s.post[i]
        convs = vgg_convs(own)
        logged = {layer["name"]: layer for layer in s.graft[i]["layers"]}
        assert set(logged) == {f"features.{n}" for n in convs}
        for n in convs:
            alpha = check_logged_layer(logged[f"features.{n}"], own, peer)
            for key in [f"features.{n}.weight"] + [f"features.{n + 1}.{t}" for t in BN_TENSORS]:
                torch.testing.assert_close(after[key], mix(alpha, own[key], peer[key]))
        assert_own(s, i, kept_by_vgg(own))
    assert "grafting mixes 40 tensors (8 conv weights, 32 BatchNorm tensors)" in s.log(2)
