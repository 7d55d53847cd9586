"""The tensor data pipeline against torchvision's transforms, its augmentation statistics, epochs and
orders; and each speed flag training a network through the real script."""
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF

from filtergraft.data import ArrayImages, TensorLoader, cifar_like_datasets, cifar_transforms, crop_flip
from filtergraft.session import read_jsonl
from helpers import one_error_line, run_script


def test_crop_flip_equals_torchvision_for_fixed_offsets_and_flips():
    train_set, _ = cifar_like_datasets("digits", "unused", 10)
    loader = TensorLoader(train_set, 8, "cpu", train=True)
    _, test_tf = cifar_transforms()
    for index, (top, left, flip) in enumerate([(0, 0, False), (8, 8, True), (3, 6, True), (4, 4, False)]):
        image = ArrayImages(train_set.data, train_set.targets).__getitem__(index)[0]
        expected = TF.crop(TF.pad(image, 4), top, left, 32, 32)
        if flip:
            expected = TF.hflip(expected)
        expected = test_tf(expected)
        got = crop_flip(loader.images[index:index + 1], torch.tensor([top]), torch.tensor([left]),
                        torch.tensor([flip]))
        got = torch.addcmul(loader.shift, got.float(), loader.scale)[0]
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def marker_dataset(n):
    """Black images with one white pixel at row 16, column 10, labelled by their index."""
    data = np.zeros((n, 32, 32, 3), dtype=np.uint8)
    data[:, 16, 10] = 255
    return ArrayImages(data, list(range(n)), cifar_transforms()[0])


def test_crop_offsets_are_uniform_over_9x9_and_flips_half():
    n = 4000
    loader = TensorLoader(marker_dataset(n), 500, "cpu", train=True, generator=torch.Generator().manual_seed(0))
    rows, cols = [], []
    for images, _ in loader:
        peak = images[:, 0].flatten(1).argmax(dim=1)
        rows.append(peak // 32)
        cols.append(peak % 32)
    rows, cols = torch.cat(rows), torch.cat(cols)
    flipped = cols >= 16  # unflipped: column 14 − left in 6..14; flipped: 17 + left in 17..25
    top = 20 - rows
    left = torch.where(flipped, cols - 17, 14 - cols)
    assert abs(flipped.float().mean().item() - 0.5) < 4 * (0.25 / n) ** 0.5
    for offsets in (top, left):
        counts = torch.bincount(offsets, minlength=9).double()
        assert counts.numel() == 9 and offsets.min() >= 0
        chi2 = ((counts - n / 9) ** 2 / (n / 9)).sum().item()
        assert chi2 < 26.1  # χ² with 8 degrees of freedom, p = 0.001


def test_every_sample_once_per_epoch_and_orders_differ_between_networks():
    dataset = marker_dataset(300)
    orders = {}
    for seed in (1, 1, 2):
        loader = TensorLoader(dataset, 64, "cpu", train=True, generator=torch.Generator().manual_seed(seed))
        epochs = [torch.cat([targets for _, targets in loader]) for _ in range(2)]
        for labels in epochs:
            assert sorted(labels.tolist()) == list(range(300))
        assert not torch.equal(epochs[0], epochs[1])
        orders.setdefault(seed, []).append(epochs[0])
    assert torch.equal(orders[1][0], orders[1][1]) and not torch.equal(orders[1][0], orders[2][0])


@pytest.mark.parametrize("flags", [("--loader", "tensor"), ("--loader", "torch", "--workers", "2"),
                                   ("--channels-last",), ("--compile", "aot_eager")],
                         ids=lambda f: "".join(f))
def test_each_speed_flag_trains_one_epoch_on_digits(tmp_path, flags):
    result = run_script("grafting_cifar/grafting.py", "--dataset", "digits", "--model", "resnet20", "--epochs", 1,
                        "--batch-size", 256, "--workers", 0, "--s", tmp_path, *flags, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_jsonl(tmp_path / "metrics_1.jsonl")[0]["train_loss"] > 0
    if flags[0] == "--loader":
        assert f"{flags[1]}" in result.stdout.splitlines()[0].split("device cpu, ")[1]


def test_amp_is_refused_clearly_on_the_cpu(tmp_path):
    result = run_script("grafting_cifar/grafting.py", "--dataset", "digits", "--epochs", 1, "--s", tmp_path, "--amp")
    assert "needs a CUDA device" in one_error_line(result)
