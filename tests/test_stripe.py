"""Stripe-wise pruning: skeleton update, exact pruning, counting, export (SPEC §5)."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from filtergraft.errors import UserError
from filtergraft.models.stripe_resnet import ShortcutBlock, StripeResNet18, StripeResNet56
from filtergraft.models.stripe_vgg import StripeVGG
from filtergraft.stripe import (FilterStripe, StripeConv, choose_modes, count_flops, count_params, fold_batchnorm,
                                export_pruned, forced_mode, prune, stripe_batchnorm, stripe_convs,
                                stripe_flops, stripe_summary, threshold_skeleton, update_skeleton)


pytestmark = pytest.mark.usefixtures("one_thread")


class TinyStripeNet(nn.Module):
    """One FilterStripe and its BatchNorm: the smallest model update_skeleton accepts."""

    def __init__(self):
        super().__init__()
        self.conv = FilterStripe(2, 3, kernel_size=2, padding=0)
        self.bn = stripe_batchnorm(3)

    def forward(self, x):
        return self.bn(self.conv(x))

    def stripe_pairs(self):
        return [(self.conv, self.bn)]


def _randomise(model, density, seed):
    """Random BN statistics and affine terms, random skeleton values with stripes zeroed at `1 - density`."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=gen) * 0.3 + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.3)
        for conv, _ in model.stripe_pairs():
            fs = conv.FilterSkeleton
            kept = torch.rand(fs.shape, generator=gen) < density
            fs.copy_((torch.rand(fs.shape, generator=gen) + 0.5) * kept)


def _assert_same(pruned, masked, x):
    """Pruned output equals masked output within 1e-4 of the output scale: all stripe, all dense, mixed."""
    with torch.no_grad():
        ref = masked.eval()(x)
        scale = ref.abs().max().item()
        assert scale > 0
        for mode in ("stripe", "dense"):
            with forced_mode(pruned, mode):
                out = pruned(x)
            assert out.shape == ref.shape
            assert (out - ref).abs().max().item() <= 1e-4 * scale, mode
        with forced_mode(pruned, "stripe"):
            for _, conv in stripe_convs(pruned)[::2]:  # memory layouts change between neighbours
                conv.mode = "dense"
            assert (pruned(x) - ref).abs().max().item() <= 1e-4 * scale, "mixed"


# ----------------------------------------------------------------------------- skeleton update


def test_update_skeleton_matches_hand_computation():
    net = TinyStripeNet()
    fs = torch.tensor([[[0.9, -0.5], [0.2, 0.0]],      # 0.2 ≤ t and the 0.0 are pruned
                       [[0.25, -0.1], [0.05, -0.25]],  # all ≤ t = 0.25 (ties included): empty filter
                       [[-2.0, 1.0], [0.3, -0.3]]])
    grad = torch.tensor([[[0.1, 0.2], [0.3, 0.4]],
                         [[-0.1, -0.2], [-0.3, -0.4]],
                         [[1.0, 2.0], [3.0, 4.0]]])
    with torch.no_grad():
        net.conv.FilterSkeleton.copy_(fs)
        net.bn.weight.copy_(torch.tensor([0.5, 0.6, 0.7]))
        net.bn.bias.copy_(torch.tensor([0.1, 0.2, 0.3]))
    net.conv.FilterSkeleton.grad = grad.clone()
    net.bn.weight.grad = torch.tensor([1.0, 2.0, 3.0])
    net.bn.bias.grad = torch.tensor([4.0, 5.0, 6.0])
    sr, t = 0.01, 0.25

    update_skeleton(net, sr, t)

    keep = fs.abs() > t
    assert torch.equal(net.conv.FilterSkeleton.detach(), torch.where(keep, fs, torch.zeros(())))
    expected_grad = torch.where(keep, grad + sr * torch.sign(fs), torch.zeros(()))
    assert torch.allclose(net.conv.FilterSkeleton.grad, expected_grad, atol=1e-7)
    assert torch.equal(net.bn.weight.detach(), torch.tensor([0.5, 0.0, 0.7]))
    assert torch.equal(net.bn.bias.detach(), torch.tensor([0.1, 0.0, 0.3]))
    assert torch.equal(net.bn.weight.grad, torch.tensor([1.0, 0.0, 3.0]))
    assert torch.equal(net.bn.bias.grad, torch.tensor([4.0, 0.0, 6.0]))


def test_update_skeleton_needs_gradients():
    with pytest.raises(RuntimeError, match="backward"):
        update_skeleton(TinyStripeNet(), 1e-4, 0.05)


def test_filter_stripe_forward_is_masked_conv():
    conv = FilterStripe(3, 4)
    with torch.no_grad():
        conv.FilterSkeleton.uniform_(-1, 1)
    x = torch.randn(2, 3, 6, 6)
    ref = F.conv2d(x, conv.weight * conv.FilterSkeleton[:, None], padding=1)
    assert torch.allclose(conv(x), ref, atol=1e-6)


# ----------------------------------------------------------------------------- exact pruning


def test_vgg_pruned_equals_masked():
    model = StripeVGG(num_classes=10)
    _randomise(model, density=0.4, seed=0)
    with torch.no_grad():
        convs = [c for c, _ in model.stripe_pairs()]
        convs[1].FilterSkeleton[:20] = 0    # several fully empty filters in a few layers
        convs[6].FilterSkeleton[5:60] = 0
        convs[12].FilterSkeleton[100:400] = 0
    threshold_skeleton(model, 0.0)
    pruned = prune(model)
    convs_pruned = [m for m in pruned if isinstance(m, StripeConv)]
    assert convs_pruned[1].out_channels <= 64 - 20
    assert convs_pruned[2].in_channels == convs_pruned[1].out_channels
    assert pruned[-1].in_features == convs_pruned[-1].out_channels <= 512 - 300
    _assert_same(pruned, model, torch.randn(3, 3, 32, 32))
    assert count_params(pruned) < count_params(model)


def test_resnet56_pruned_equals_masked_with_removed_blocks():
    model = StripeResNet56(num_classes=10)
    _randomise(model, density=0.5, seed=1)
    blocks = model.blocks()
    with torch.no_grad():
        blocks[2].conv1.FilterSkeleton.zero_()   # conv1 lost every stripe, conv2 still adds bn2's constant
        blocks[9].conv1.FilterSkeleton.zero_()   # a downsampling block, both convs empty
        blocks[9].conv2.FilterSkeleton.zero_()
        blocks[12].conv1.FilterSkeleton.zero_()  # both convs empty and bn2 silent: the block is the identity
        blocks[12].conv2.FilterSkeleton.zero_()
        blocks[12].bn2.weight.zero_()
        blocks[12].bn2.bias.zero_()
        blocks[20].conv2.FilterSkeleton.zero_()  # conv2 lost every stripe
        blocks[5].conv1.FilterSkeleton[3:9] = 0  # some inner filters
    threshold_skeleton(model, 0.0)
    pruned = prune(model)
    pruned_blocks = list(pruned.layers)
    assert isinstance(pruned_blocks[2], ShortcutBlock) and isinstance(pruned_blocks[20], ShortcutBlock)
    assert isinstance(pruned_blocks[9], ShortcutBlock)  # the option-B shortcut and bn2's constant stay
    assert isinstance(pruned_blocks[9].shortcut, StripeConv) and pruned_blocks[9].shortcut.num_stripes == 32
    assert isinstance(pruned_blocks[12], nn.Identity)
    assert isinstance(pruned_blocks[18].shortcut, StripeConv)  # layer3.0 keeps its 1×1 conv + BN
    assert pruned_blocks[5].conv1.out_channels <= 16 - 6
    assert pruned_blocks[5].conv2.in_channels == pruned_blocks[5].conv1.out_channels
    _assert_same(pruned, model, torch.randn(3, 3, 32, 32))
    assert count_params(pruned) < count_params(model)


def test_resnet18_pruned_equals_masked():
    model = StripeResNet18(num_classes=7)
    _randomise(model, density=0.5, seed=2)
    with torch.no_grad():
        model.layer3[0].conv1.FilterSkeleton.zero_()  # a block with a 1×1-conv shortcut replaced by it
        model.layer4[1].conv1.FilterSkeleton[:100] = 0
    threshold_skeleton(model, 0.0)
    pruned = prune(model)
    assert isinstance(list(pruned.layers)[4], ShortcutBlock)
    _assert_same(pruned, model, torch.randn(2, 3, 64, 64))


def test_stripe_conv_handles_strides_odd_sizes_chunks_and_fusion(monkeypatch):
    gen = torch.Generator().manual_seed(3)
    monkeypatch.setattr("filtergraft.stripe.CHUNK_BYTES", 4096)  # force several batch chunks
    for stride, size, k, pad in [(1, 8, 3, 1), (2, 8, 3, 1), (2, 7, 3, 1), (1, 9, 5, 2), (1, 1, 3, 1)]:
        weight = torch.randn(6, 5, k, k, generator=gen)
        keep = torch.rand(6, k, k, generator=gen) < 0.5
        keep[0] = False
        bias = torch.randn(6, generator=gen)
        x = torch.randn(5, 5, size, size, generator=gen)
        ref = F.conv2d(x, weight * keep[:, None], bias, stride, pad)
        residual = torch.randn(ref.shape, generator=gen)
        for mode in ("stripe", "dense"):
            conv = StripeConv(weight * keep[:, None], keep, bias, stride, pad, mode=mode)
            assert torch.allclose(conv(x), ref, atol=1e-5), (stride, size, k, mode)
            fused = StripeConv(weight * keep[:, None], keep, bias, stride, pad, relu=True, mode=mode)
            assert torch.allclose(fused(x, residual=residual), F.relu(ref + residual), atol=1e-5)


def test_prune_refuses_empty_filter_with_live_batchnorm():
    model = StripeVGG()
    model.eval()
    with torch.no_grad():
        model.features[0].FilterSkeleton[0] = 0
        model.features[1].bias[0] = 1.0  # relu(β) > 0: removing the filter would change the output
    with pytest.raises(UserError, match="threshold_skeleton"):
        prune(model)


def test_choose_modes_records_modes():
    model = StripeResNet56(num_classes=10, blocks_per_stage=1)
    _randomise(model, density=0.3, seed=4)
    threshold_skeleton(model, 0.0)
    pruned = prune(model)
    summary = choose_modes(pruned, torch.randn(2, 3, 32, 32), repeats=1)
    assert summary["stripe"] + summary["dense"] == len(summary["layers"]) == 7 + 2  # 2 option-B shortcuts
    assert all(layer["mode"] in ("stripe", "dense") for layer in summary["layers"])
    assert stripe_summary(pruned) == summary


# ----------------------------------------------------------------------------- counting


def test_conv_flops_closed_form():
    n, c, k, h = 8, 4, 3, 10
    conv = FilterStripe(c, n, k, stride=2, padding=1)
    h_out = (h + 2 - k) // 2 + 1
    assert count_flops(conv, (c, h, h)) == 2 * n * c * k * k * h_out * h_out


def test_stripe_flops_count_kept_stripes_only():
    n, c, k, h = 8, 4, 3, 10
    keep = torch.rand(n, k, k) < 0.4
    conv = StripeConv(torch.randn(n, c, k, k) * keep[:, None], keep, torch.randn(n), mode="stripe")
    assert count_flops(conv, (c, h, h)) == 2 * int(keep.sum()) * c * h * h
    conv.mode = "dense"
    assert count_flops(conv, (c, h, h)) == 2 * n * c * k * k * h * h
    assert stripe_flops(nn.Sequential(conv), (c, h, h)) == 2 * int(keep.sum()) * c * h * h
    assert conv.mode == "dense"
    assert count_params(conv) == int(keep.sum()) * c + n


def test_masked_model_flops_are_dense_and_pruned_fewer():
    model = StripeResNet56(num_classes=10, blocks_per_stage=1)
    _randomise(model, density=0.3, seed=5)
    threshold_skeleton(model, 0.0)
    dense = count_flops(model, (3, 32, 32))
    convs = 2 * 32 * 32 * 9 * (3 * 16 + 16 * 16 * 2) + 2 * 16 * 16 * 9 * (16 * 32 + 32 * 32) \
        + 2 * 8 * 8 * 9 * (32 * 64 + 64 * 64)
    shortcuts = 2 * 16 * 16 * 16 * 32 + 2 * 8 * 8 * 32 * 64
    assert dense == convs + shortcuts + 2 * 64 * 10
    assert stripe_flops(prune(model), (3, 32, 32)) < 0.5 * dense


# ----------------------------------------------------------------------------- export


def test_export_round_trip_without_filtergraft(tmp_path):
    model = StripeResNet56(num_classes=10, blocks_per_stage=1)
    _randomise(model, density=0.5, seed=6)
    with torch.no_grad():
        model.blocks()[1].conv1.FilterSkeleton.zero_()
    threshold_skeleton(model, 0.0)
    pruned = prune(model)
    for i, (_, conv) in enumerate(stripe_convs(pruned)):
        conv.mode = "stripe" if i % 3 else "dense"
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = pruned(x)
    path = tmp_path / "pruned.pt2"
    export_pruned(pruned, str(path), x[:1])
    torch.save({"x": x, "ref": ref}, tmp_path / "io.pt")
    code = (
        "import sys, torch\n"
        f"d = torch.load({str(tmp_path / 'io.pt')!r})\n"
        f"net = torch.export.load({str(path)!r}).module()\n"
        "for b in (1, 3):\n"
        "    err = (net(d['x'][:b]) - d['ref'][:b]).abs().max().item()\n"
        "    assert err <= 1e-5 * d['ref'].abs().max().item(), (b, err)\n"
        "assert 'filtergraft' not in sys.modules\n"
        "print('ok')\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "ok"



def test_batchnorm_folding_is_the_formula():
    """fold_batchnorm (torch's fuse_conv_bn_weights) against W·γ/√(σ²+ε) and β − μ·γ/√(σ²+ε), and a folded
    conv's outputs against conv then eval-mode BatchNorm."""
    gen = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(5, 7, 3, padding=1, bias=False)
    bn = nn.BatchNorm2d(7).eval()
    with torch.no_grad():
        for tensor in (bn.weight, bn.bias, bn.running_mean):
            tensor.copy_(torch.randn(7, generator=gen))
        bn.running_var.copy_(torch.rand(7, generator=gen) + 0.1)
    weight, bias = fold_batchnorm(conv.weight.detach(), bn)
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    torch.testing.assert_close(weight, conv.weight.detach() * scale[:, None, None, None])
    torch.testing.assert_close(bias, bn.bias.detach() - bn.running_mean * scale)
    x = torch.randn(2, 5, 8, 8, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(F.conv2d(x, weight, bias, padding=1), bn(conv(x)), rtol=1e-5, atol=1e-5)
