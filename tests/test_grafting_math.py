"""Entropy, the graft coefficient, layer discovery, filter-level grafting and scion sources, against
hand-computed values and independent NumPy computations."""
import math

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from filtergraft.grafting import (Grafter, graft_coefficient, graft_internal, graft_noise, graft_units, layer_entropy,
                                  release_bin_counts)
from filtergraft.models import create_model


def numpy_entropy(values, bins=10):
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.max() == values.min():
        return 0.0
    counts, _ = np.histogram(values, bins=bins, range=(values.min(), values.max()))
    p = counts[counts > 0] / values.size
    return float(-(p * np.log(p)).sum())


def test_closed_entropy_hand_values():
    closed = lambda w: float(layer_entropy(w, binning="closed"))  # noqa: E731
    assert closed(torch.full((4, 3, 3, 3), 0.7)) == 0.0
    assert closed(torch.tensor([0.0, 0.0, 1.0, 1.0])) == pytest.approx(math.log(2))
    assert closed(torch.arange(10.0)) == pytest.approx(math.log(10))
    # three values in bins 0, 4 and 9 with counts 2, 1, 1
    assert closed(torch.tensor([0.0, 0.0, 0.45, 1.0])) == pytest.approx(
        -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)))


def test_closed_entropy_matches_numpy_histogram():
    torch.manual_seed(0)
    for shape in [(16, 3, 3, 3), (64, 32, 3, 3), (10, 64)]:
        w = torch.randn(shape) * 0.1
        assert float(layer_entropy(w, binning="closed")) == pytest.approx(numpy_entropy(w.numpy()), abs=1e-12)


def numpy_release_bins(values, bins=10):
    """The release's histogram in NumPy float32 scalars: (counts n_k, whether min + bins·s ≤ max, i.e. the
    maximum lies in no bin)."""
    x = np.asarray(values, dtype=np.float32).ravel()
    low, high = x.min(), x.max()
    step = (high - low) / np.float32(bins)
    counts = []
    for k in range(bins):
        lower, upper = low + np.float32(k) * step, low + np.float32(k + 1) * step
        counts.append(int(np.count_nonzero((x >= lower) & (x < upper))))
    return counts, bool(low + np.float32(bins) * step <= high)


def numpy_release_entropy(values, bins=10):
    counts, _ = numpy_release_bins(values, bins)
    n = np.float32(np.asarray(values).size)
    h = np.float32(0)
    for count in counts:
        if count:
            p = np.float32(count) / n
            h = h - p * np.log(p)
    return float(h)


def edge_probe(low, high, seed):
    """Values in [low, high]: both ends, every float32 bin bound low + k·s and the float32 just below each."""
    low, high = np.float32(low), np.float32(high)
    step = (high - low) / np.float32(10)
    edges = np.array([low + np.float32(k) * step for k in range(1, 10)], dtype=np.float32)
    below = np.nextafter(edges, np.float32(-np.inf))
    inside = np.random.default_rng(seed).uniform(low, high, 500).astype(np.float32)
    return torch.from_numpy(np.concatenate([[low, high], edges, below, inside]).astype(np.float32))


@pytest.mark.parametrize("low, high, max_in_no_bin", [(-1.0, 0.7, False), (0.0, 1.0, True), (0.0, 0.1, True)])
def test_release_entropy_matches_an_independent_float32_histogram(low, high, max_in_no_bin):
    w = edge_probe(low, high, seed=int(10 * high))
    counts, outside = numpy_release_bins(w.numpy())
    assert outside == max_in_no_bin  # the case this tensor was built for
    assert release_bin_counts(w).tolist() == counts
    assert sum(counts) == w.numel() - (int((w == w.max()).sum()) if outside else 0)
    h = float(layer_entropy(w))
    assert h == pytest.approx(numpy_release_entropy(w.numpy()), rel=1e-6)
    if outside:  # the maximum counts in n but in no bin: the release's entropy is not the closed one
        assert abs(h - float(layer_entropy(w, binning="closed"))) > 1e-4


def test_release_entropy_hand_values():
    assert float(layer_entropy(torch.full((4, 3, 3, 3), 0.7))) == 0.0
    # min + 10·s rounds to exactly 1.0 in float32, so the two 1.0 fall in no bin: p = (1/2), H = ln(2)/2
    assert float(layer_entropy(torch.tensor([0.0, 0.0, 1.0, 1.0]))) == pytest.approx(math.log(2) / 2)


def test_release_entropy_of_random_layers_matches_numpy():
    torch.manual_seed(1)
    cases = {True: 0, False: 0}
    for shape in [(16, 3, 3, 3), (64, 32, 3, 3), (10, 64), (128, 64, 1, 1), (32, 1, 3, 3)] * 8:
        w = torch.randn(shape) * torch.rand(()) + torch.randn(())
        counts, outside = numpy_release_bins(w.numpy())
        cases[outside] += 1
        assert release_bin_counts(w).tolist() == counts
        assert float(layer_entropy(w)) == pytest.approx(numpy_release_entropy(w.numpy()), rel=1e-6)
    assert cases[True] and cases[False]  # both kinds of tensor occurred


def test_graft_coefficient_hand_values():
    assert graft_coefficient(1.3, 1.3) == 0.5
    assert graft_coefficient(math.log(2), 0.0) == 0.7  # 0.4/π·atan(346.6) + 0.5 = 0.69963
    assert graft_coefficient(0.0, math.log(2)) == 0.3
    assert graft_coefficient(0.001, 0.0) == 0.56  # 0.4/π·atan(0.5) + 0.5 = 0.55903
    assert graft_coefficient(0.001, 0.0, a=0.4, c=5000) == 0.67  # 0.4/π·atan(5) + 0.5 = 0.67488
    tensor = graft_coefficient(torch.tensor([0.001, 0.0]), torch.tensor([0.0, 0.0]))
    assert tensor.tolist() == pytest.approx([0.56, 0.5])


def by_name(units):
    return {u.name: u for u in units}


def test_every_conv_and_linear_is_a_unit_with_its_batchnorm():
    units = by_name(graft_units(create_model("resnet20")))
    assert units["conv1"].norm == "bn1"
    assert units["layer2.0.conv2"].members == ["layer2.0.conv2.weight", *(f"layer2.0.bn2.{k}" for k in (
        "weight", "bias", "running_mean", "running_var"))]
    assert units["linear"].norm is None and units["linear"].members == ["linear.weight", "linear.bias"]
    vgg = by_name(graft_units(create_model("vgg11")))
    assert vgg["features.0"].norm == "features.1" and "features.0.bias" in vgg["features.0"].members
    assert vgg["features.0"].next_layers == ["features.4"]
    assert vgg["features.25"].next_layers == ["classifier"]
    tv = by_name(graft_units(torchvision.models.resnet18(num_classes=10)))
    assert tv["layer2.0.downsample.0"].norm == "layer2.0.downsample.1"
    assert tv["layer2.0.conv1"].norm == "layer2.0.bn1"


def test_every_floating_tensor_is_grafted_exactly_once():
    for model in (create_model("mobilenetv2"), create_model("wrn28_10"), torchvision.models.resnet18()):
        members = [key for unit in graft_units(model) for key in unit.members]
        floating = [k for k, v in model.state_dict().items() if v.is_floating_point()]
        assert sorted(members) == sorted(floating)


def randomised(name, seed):
    torch.manual_seed(seed)
    model = create_model(name)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.weight.data.uniform_(-1, 1)
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    return model


def test_layer_grafting_mixes_each_layer_with_its_own_alpha():
    own, peer = randomised("vgg11", 0), randomised("vgg11", 1)
    before = {k: v.clone() for k, v in own.state_dict().items()}
    peer_state = peer.state_dict()
    records = {r["name"]: r for r in Grafter(own, entropy_bins="closed").graft(peer_state)}
    for layer, norm in [("features.0", "features.1"), ("features.8", "features.9"), ("classifier", None)]:
        w_self, w_peer = before[f"{layer}.weight"], peer_state[f"{layer}.weight"]
        alpha = graft_coefficient(numpy_entropy(w_self.numpy()), numpy_entropy(w_peer.numpy()))
        assert records[layer]["alpha"] == pytest.approx(alpha)
        keys = [f"{layer}.weight", f"{layer}.bias"] + ([f"{norm}.{k}" for k in ("weight", "bias", "running_mean",
                                                                                "running_var")] if norm else [])
        for key in keys:
            expected = alpha * before[key] + (1 - alpha) * peer_state[key]
            torch.testing.assert_close(own.state_dict()[key], expected)
    assert torch.equal(own.state_dict()["features.1.num_batches_tracked"], before["features.1.num_batches_tracked"])


def test_filter_level_grafting_uses_per_channel_gamma_coefficients():
    own, peer = randomised("vgg11", 2), randomised("vgg11", 3)
    before = {k: v.clone() for k, v in own.state_dict().items()}
    p = peer.state_dict()
    Grafter(own, level="filter").graft(p)
    after = own.state_dict()

    def w(bn):
        g_self, g_peer = before[f"{bn}.weight"].abs(), p[f"{bn}.weight"].abs()
        return g_self / (g_self + g_peer)

    def mixed(key, coef):
        return coef * before[key] + (1 - coef) * p[key]

    w1, w2 = w("features.1"), w("features.5")
    torch.testing.assert_close(after["features.0.weight"], mixed("features.0.weight", w1.view(-1, 1, 1, 1)))
    torch.testing.assert_close(after["features.1.running_var"], mixed("features.1.running_var", w1))
    between = w2.view(-1, 1, 1, 1) * w1.view(1, -1, 1, 1)  # output filter j of BN 5, input channel k of BN 1
    torch.testing.assert_close(after["features.4.weight"], mixed("features.4.weight", between))
    for key in ("features.0.bias", "features.4.bias", "classifier.weight", "classifier.bias"):
        assert torch.equal(after[key], before[key]), key  # the release's filter-level script kept these


def test_filter_level_depthwise_conv_reads_its_own_input_channel():
    own, peer = randomised("mobilenetv2", 5), randomised("mobilenetv2", 6)
    before = {k: v.clone() for k, v in own.state_dict().items()}
    p = peer.state_dict()
    Grafter(own, level="filter").graft(p)

    def w(bn):
        g_self, g_peer = before[f"{bn}.weight"].abs(), p[f"{bn}.weight"].abs()
        return g_self / (g_self + g_peer)

    key = "layers.3.conv2.weight"  # depthwise: filter j reads input channel j alone
    coef = (w("layers.3.bn2") * w("layers.3.bn1")).view(-1, 1, 1, 1)
    torch.testing.assert_close(own.state_dict()[key], coef * before[key] + (1 - coef) * p[key])


def test_conv_only_mixes_conv_weights_and_their_batchnorms_alone():
    own, peer = randomised("vgg11", 7), randomised("vgg11", 8)
    before = {k: v.clone() for k, v in own.state_dict().items()}
    p = peer.state_dict()
    grafter = Grafter(own, conv_only=True)
    records = {r["name"]: r["alpha"] for r in grafter.graft(p)}
    after = own.state_dict()
    assert set(records) == {f"features.{i}" for i in (0, 4, 8, 11, 15, 18, 22, 25)}
    alpha = records["features.8"]
    for key in ("features.8.weight", "features.9.weight", "features.9.running_mean"):
        torch.testing.assert_close(after[key], alpha * before[key] + (1 - alpha) * p[key])
    for key in ("features.8.bias", "classifier.weight", "classifier.bias"):
        assert torch.equal(after[key], before[key]), key
    assert grafter.describe() == ("grafting mixes 40 tensors (8 conv weights, 32 BatchNorm tensors); keeps its "
                                  "own: 10 tensors (8 conv biases, 1 linear weight, 1 linear bias)")
    assert Grafter(own).describe().endswith("keeps its own: nothing")


def with_invalid_filters(seed):
    torch.manual_seed(seed)
    model = create_model("resnet20")
    invalid = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            index = torch.randperm(module.out_channels)[:3]
            module.weight.data[index] *= 1e-4
            invalid[name] = index
    return model, invalid


@pytest.mark.parametrize("source", ["noise", "internal"])
def test_scion_sources_touch_only_invalid_filters(source):
    model, invalid = with_invalid_filters(4)
    before = {name: m.weight.detach().clone() for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    if source == "noise":
        records = graft_noise(model, sigma=0.5, threshold=0.1)
    else:
        records = graft_internal(model, threshold=0.1)
    assert all(r["invalid"] == 3 for r in records)
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            changed = (module.weight != before[name]).flatten(1).any(dim=1)
            assert sorted(changed.nonzero().flatten().tolist()) == sorted(invalid[name].tolist())
