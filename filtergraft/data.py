"""Datasets and loaders: CIFAR-10/100, scikit-learn's digits as 32x32 RGB, FakeData, ImageFolder."""
import os

import torch
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets

from .errors import UserError

CIFAR_STATS = {
    10: ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    100: ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
DATASETS = ("cifar", "digits", "fake")
FAKE_SIZES = {"train": 256, "test": 128}
DIGITS_TEST_SIZE = 360


def cifar_transforms(num_classes=10):
    """(train, test) transforms: random crop 32 with padding 4 and flip for training; normalise both."""
    normalize = T.Normalize(*CIFAR_STATS[num_classes])
    train = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), normalize])
    test = T.Compose([T.ToTensor(), normalize])
    return train, test


class ArrayImages(Dataset):
    """Images held in memory as a uint8 N x H x W x 3 array, served as PIL images like torchvision's CIFAR."""

    def __init__(self, data, targets, transform=None):
        self.data = data
        self.targets = list(targets)
        self.transform = transform

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        image = Image.fromarray(self.data[index])
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]


def digits_arrays():
    """scikit-learn's 1,797 handwritten digits, bilinearly upsampled 8x8 -> 32x32 and repeated to RGB.

    Returns ((train_images, train_labels), (test_images, test_labels)) with a fixed stratified
    split of 1,437 / 360 images.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    small = torch.from_numpy(digits.images).float().unsqueeze(1) / 16.0
    big = F.interpolate(small, size=(32, 32), mode="bilinear", align_corners=False)
    images = (big.clamp(0, 1) * 255).round().to(torch.uint8).repeat(1, 3, 1, 1)
    images = images.permute(0, 2, 3, 1).contiguous().numpy()
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=DIGITS_TEST_SIZE, stratify=digits.target, random_state=0)
    return (x_train, y_train.tolist()), (x_test, y_test.tolist())


def _cifar(root, num_classes, train, transform):
    """torchvision's CIFAR under `root`, downloaded when missing; offline failures become one clear line."""
    cls = datasets.CIFAR10 if num_classes == 10 else datasets.CIFAR100
    folder = "cifar-10-batches-py" if num_classes == 10 else "cifar-100-python"
    try:
        return cls(root, train=train, transform=transform, download=False)
    except RuntimeError:
        pass
    try:
        os.makedirs(root, exist_ok=True)
        return cls(root, train=train, transform=transform, download=True)
    except (OSError, RuntimeError) as err:
        raise UserError(f"CIFAR-{num_classes} is not in {root} and could not be downloaded ({err}); "
                        f"put the extracted '{folder}' folder into {root} or pass --data DIR") from None


def cifar_like_datasets(name, root, num_classes=10):
    """(train, test) datasets with CIFAR augmentation for `name` in cifar | digits | fake."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset '{name}'; choose one of: {', '.join(DATASETS)}")
    if num_classes not in CIFAR_STATS:
        raise UserError(f"--cifar must be 10 or 100, not {num_classes}")
    train_tf, test_tf = cifar_transforms(num_classes)
    if name == "cifar":
        return _cifar(root, num_classes, True, train_tf), _cifar(root, num_classes, False, test_tf)
    if name == "digits":
        if num_classes != 10:
            raise UserError("the digits dataset has 10 classes; use --cifar 10 with --dataset digits")
        (x_train, y_train), (x_test, y_test) = digits_arrays()
        return ArrayImages(x_train, y_train, train_tf), ArrayImages(x_test, y_test, test_tf)
    return (datasets.FakeData(FAKE_SIZES["train"], (3, 32, 32), num_classes, train_tf),
            datasets.FakeData(FAKE_SIZES["test"], (3, 32, 32), num_classes, test_tf, random_offset=10**6))


def make_loaders(train_set, test_set, batch_size, workers, seed=None, pin_memory=False):
    """Shuffled training loader driven by its own generator (so resume can restore the data order),
    and an ordered test loader. Returns (train_loader, test_loader, generator)."""
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    common = dict(num_workers=workers, pin_memory=pin_memory, persistent_workers=workers > 0)
    train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, generator=generator, **common)
    test_loader = DataLoader(test_set, batch_size=batch_size, shuffle=False, **common)
    return train_loader, test_loader, generator

