"""The digits and fake loaders, the CIFAR transforms and the offline CIFAR error."""
import numpy as np
import torch

from filtergraft.data import cifar_like_datasets, digits_arrays, make_loaders
from helpers import one_error_line, run_script


def test_digits_split_is_fixed_stratified_and_32x32_rgb():
    (x_train, y_train), (x_test, y_test) = digits_arrays()
    assert x_train.shape == (1437, 32, 32, 3) and x_test.shape == (360, 32, 32, 3)
    assert x_train.dtype == np.uint8 and x_train.max() > 200
    assert np.array_equal(x_train[..., 0], x_train[..., 2])  # grey digits repeated to RGB
    counts = np.bincount(y_test, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # 360 / 10 classes, stratified
    (x_again, _), _ = digits_arrays()
    assert np.array_equal(x_train, x_again)


def test_digits_loader_batches_are_normalised_tensors():
    train_set, test_set = cifar_like_datasets("digits", "unused", 10)
    train_loader, test_loader, _ = make_loaders(train_set, test_set, 64, workers=0, seed=0)
    images, labels = next(iter(test_loader))
    assert images.shape == (64, 3, 32, 32) and labels.shape == (64,)
    assert images.dtype == torch.float32 and images.min() < -1 and images.max() > 1
    assert len(train_loader.dataset) == 1437 and len(test_loader.dataset) == 360


def test_test_transform_is_deterministic_and_train_transform_augments():
    train_set, test_set = cifar_like_datasets("digits", "unused", 10)
    assert torch.equal(test_set[0][0], test_set[0][0])
    views = torch.stack([train_set[0][0] for _ in range(20)])
    assert (views - views[0]).abs().amax() > 0


def test_fake_data_is_deterministic():
    train_a, test_a = cifar_like_datasets("fake", "unused", 100)
    train_b, _ = cifar_like_datasets("fake", "unused", 100)
    assert len(train_a) == 256 and len(test_a) == 128
    assert train_a[3][1] == train_b[3][1]
    assert torch.equal(test_a[5][0], test_a[5][0])


def test_shuffle_order_follows_the_seed():
    train_set, test_set = cifar_like_datasets("fake", "unused", 10)
    first = [next(iter(make_loaders(train_set, test_set, 16, 0, seed=s)[0]))[1] for s in (1, 1, 2)]
    assert torch.equal(first[0], first[1]) and not torch.equal(first[0], first[2])


def test_missing_cifar_offline_is_one_clear_line(tmp_path):
    result = run_script("grafting_cifar/grafting.py", "--dataset", "cifar", "--data", tmp_path / "data",
                        "--s", tmp_path / "s", "--epochs", "1")
    line = one_error_line(result)
    assert "cifar-10-batches-py" in line and str(tmp_path / "data") in line
    assert not (tmp_path / "s").exists()
