"""Datasets and loaders: CIFAR-10/100, scikit-learn's digits as 32x32 RGB, FakeData, ImageFolder."""
import os

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler
from torchvision import datasets

from .errors import FlagError, UserError

# The releases normalise CIFAR-10 and CIFAR-100 alike with these constants (SPEC §3), not with each
# dataset's own statistics; every CIFAR-style script does, stripe pruning included.
CIFAR_NORMALIZATION = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
CIFAR_CLASSES = (10, 100)
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
DATASETS = ("cifar", "digits", "fake")
FAKE_SIZES = {"train": 256, "test": 128}
DIGITS_TEST_SIZE = 360


def cifar_transforms():
    """(train, test) transforms: random crop 32 with padding 4 and flip for training; normalise both."""
    normalize = T.Normalize(*CIFAR_NORMALIZATION)
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
        raise FlagError("data", f"CIFAR-{num_classes} is not in {root} and could not be downloaded ({err}); "
                                f"put the extracted '{folder}' folder into {root} or pass {{flag}} DIR") from None


def check_cifar_like(name, num_classes):
    """Refuse a dataset other than cifar | digits | fake, or a class count it does not have."""
    if name not in DATASETS:
        raise FlagError("dataset", f"unknown {{flag}} '{name}'; choose one of: {', '.join(DATASETS)}")
    if num_classes not in CIFAR_CLASSES:
        raise FlagError("num_classes", f"{{flag}} must be 10 or 100, not {num_classes}")
    if name == "digits" and num_classes != 10:
        raise FlagError("num_classes", "the digits dataset has 10 classes; use {flag} 10 with --dataset digits")


def cifar_like_datasets(name, root, num_classes=10):
    """(train, test) datasets with CIFAR augmentation for `name` in cifar | digits | fake."""
    check_cifar_like(name, num_classes)
    train_tf, test_tf = cifar_transforms()
    if name == "cifar":
        return _cifar(root, num_classes, True, train_tf), _cifar(root, num_classes, False, test_tf)
    if name == "digits":
        (x_train, y_train), (x_test, y_test) = digits_arrays()
        return ArrayImages(x_train, y_train, train_tf), ArrayImages(x_test, y_test, test_tf)
    return (datasets.FakeData(FAKE_SIZES["train"], (3, 32, 32), num_classes, train_tf),
            datasets.FakeData(FAKE_SIZES["test"], (3, 32, 32), num_classes, test_tf, random_offset=10**6))


def in_memory_images(dataset):
    """(uint8 N x 3 x H x W tensor, int64 targets) of a CIFAR-like dataset, or None when its images are
    files (ImageFolder)."""
    if hasattr(dataset, "data") and hasattr(dataset, "targets"):
        images = torch.as_tensor(np.asarray(dataset.data))
        return images.permute(0, 3, 1, 2).contiguous(), torch.as_tensor(dataset.targets, dtype=torch.long)
    if isinstance(dataset, datasets.FakeData):
        plain = datasets.FakeData(len(dataset), dataset.image_size, dataset.num_classes,
                                  random_offset=dataset.random_offset)
        pairs = [plain[i] for i in range(len(plain))]
        images = torch.stack([torch.from_numpy(np.array(image)) for image, _ in pairs])
        return images.permute(0, 3, 1, 2).contiguous(), torch.tensor([int(t) for _, t in pairs])
    return None


def _normalization(dataset):
    for step in getattr(dataset.transform, "transforms", []):
        if isinstance(step, T.Normalize):
            return step.mean, step.std
    raise ValueError("the dataset's transform has no Normalize step")


def crop_flip(images, top, left, flip, pad=4):
    """Batch random crop with zero padding and horizontal flip: sample b is the H x W window at (top_b,
    left_b) of its zero-padded image, mirrored where flip_b; two gathers, no per-sample loop."""
    n, c, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    rows = top[:, None] + torch.arange(h, device=images.device)
    band = padded.gather(2, rows[:, None, :, None].expand(n, c, h, w + 2 * pad))
    cols = torch.arange(w, device=images.device).expand(n, w)
    cols = left[:, None] + torch.where(flip[:, None], w - 1 - cols, cols)
    return band.gather(3, cols[:, None, None, :].expand(n, c, h, w))


def shard_part(length, rank, size):
    """The part of a batch of `length` that rank `rank` of `size` takes: [rank·length // size, (rank + 1)·length // size)."""
    return slice(rank * length // size, (rank + 1) * length // size)


def sharded_batches(items, batch_size, ranks):
    """How many batches of `batch_size` `items` make when a last one smaller than `ranks` is left out."""
    full, rest = divmod(items, batch_size)
    return full + (rest >= ranks)


class ShardedBatches(Sampler):
    """Rank `rank` of `size`'s part (shard_part) of each batch of `batch_size` indices drawn from `sampler`;
    a last batch with fewer indices than ranks is left out (a rank would get none)."""

    def __init__(self, sampler, batch_size, rank, size):
        self.sampler, self.batch_size, self.rank, self.size = sampler, batch_size, rank, size

    def __iter__(self):
        batch = []
        for index in self.sampler:
            batch.append(index)
            if len(batch) == self.batch_size:
                yield batch[shard_part(len(batch), self.rank, self.size)]
                batch = []
        if len(batch) >= self.size:
            yield batch[shard_part(len(batch), self.rank, self.size)]

    def __len__(self):
        return sharded_batches(len(self.sampler), self.batch_size, self.size)


class TensorLoader:
    """A loader for in-memory uint8 datasets that keeps the whole dataset on the training device and
    builds each batch with tensor operations: shuffle with the network's own generator, random crop
    (padding 4, offsets uniform over the 9 x 9 positions) and flip (p = 0.5) for training, then
    normalisation. Same augmentation distribution as the torchvision transforms, without per-image work.
    `shard` (rank, ranks): that rank's part of each batch (shard_part); the order and augmentation
    stay the generator's, so the ranks together see the batches one loader would give."""

    def __init__(self, dataset, batch_size, device, train, generator=None, pad=4, shard=None):
        images, targets = in_memory_images(dataset)
        self.images = images.to(device)
        self.targets = targets.to(device)
        mean, std = (torch.tensor(v, device=device).view(1, -1, 1, 1) for v in _normalization(dataset))
        # (x/255 − mean)/std as one multiply-add on the uint8 values
        self.scale, self.shift = 1 / (255 * std), -mean / std
        self.batch_size = batch_size
        self.device = device
        self.train = train
        self.generator = generator
        self.pad = pad
        self.dataset = dataset
        self.rank, self.ranks = shard or (0, 1)

    def __len__(self):
        return sharded_batches(len(self.targets), self.batch_size, self.ranks)

    def __iter__(self):
        n = len(self.targets)
        order = torch.randperm(n, generator=self.generator) if self.train else torch.arange(n)
        if self.train:
            top = torch.randint(0, 2 * self.pad + 1, (n,), generator=self.generator)
            left = torch.randint(0, 2 * self.pad + 1, (n,), generator=self.generator)
            flip = torch.rand(n, generator=self.generator) < 0.5
            top, left, flip = (t.to(self.device, non_blocking=True) for t in (top, left, flip))
        order = order.to(self.device, non_blocking=True)
        for start in range(0, n, self.batch_size):
            length = min(self.batch_size, n - start)
            if length < self.ranks:
                break  # a rank would get no image of it
            part = shard_part(length, self.rank, self.ranks)
            span = slice(start + part.start, start + part.stop)
            index = order[span]
            images = self.images[index]
            if self.train:
                images = crop_flip(images, top[span], left[span], flip[span], self.pad)
            yield torch.addcmul(self.shift, images.float(), self.scale), self.targets[index]


LOADERS = ("auto", "tensor", "torch")


def describe_loader(loader):
    """'tensor' or 'torch (N workers)', for the log."""
    if isinstance(loader, TensorLoader):
        return "tensor"
    return f"torch ({loader.num_workers} workers)"


def make_loaders(train_set, test_set, batch_size, workers, seed=None, pin_memory=False, loader="torch",
                 device="cpu", shard=None):
    """Training loader shuffled by its own generator (so resume can restore the data order) and an ordered
    test loader: torchvision's per-image pipeline in DataLoader workers ('torch'), or the whole in-memory
    dataset on `device` with batched augmentation ('tensor'); 'auto' takes 'tensor' for in-memory datasets.
    `shard` (rank, ranks): both give that rank's part of each batch of `batch_size` (ShardedBatches).
    Returns (train_loader, test_loader, generator)."""
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    in_memory = in_memory_images(test_set) is not None
    if loader == "auto":
        loader = "tensor" if in_memory else "torch"
    if loader == "tensor":
        if not in_memory:
            raise UserError("--loader tensor needs an in-memory dataset (cifar, digits, fake); use --loader torch")
        return (TensorLoader(train_set, batch_size, device, True, generator, shard=shard),
                TensorLoader(test_set, batch_size, device, False, shard=shard), generator)
    common = dict(num_workers=workers, pin_memory=pin_memory, persistent_workers=workers > 0)
    if shard is None:
        train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, generator=generator, **common)
        test_loader = DataLoader(test_set, batch_size=batch_size, shuffle=False, **common)
        return train_loader, test_loader, generator
    # The sampler draws the network's order; the workers' seeds come from this rank's global generator.
    train_batches = ShardedBatches(RandomSampler(train_set, generator=generator), batch_size, *shard)
    test_batches = ShardedBatches(SequentialSampler(test_set), batch_size, *shard)
    return (DataLoader(train_set, batch_sampler=train_batches, **common),
            DataLoader(test_set, batch_sampler=test_batches, **common), generator)


def imagenet_transforms(crop_size=224, resize_size=256):
    """(train, eval) transforms of the ImageNet recipe: RandomResizedCrop(crop) and a horizontal flip for
    training, Resize(resize) then CenterCrop(crop) for evaluation, ImageNet normalisation for both."""
    normalize = T.Normalize(*IMAGENET_STATS)
    train = T.Compose([T.RandomResizedCrop(crop_size), T.RandomHorizontalFlip(), T.ToTensor(), normalize])
    evaluation = T.Compose([T.Resize(resize_size), T.CenterCrop(crop_size), T.ToTensor(), normalize])
    return train, evaluation


class UnreadableImage(UserError):
    """An image file that cannot be decoded. A DataLoader worker re-raises an exception in the main process
    as `type(text)` with the worker's whole traceback as text; this keeps only the one-line message."""

    def __init__(self, message):
        marker = f"{type(self).__module__}.{type(self).__qualname__}: "
        lines = [line for line in str(message).splitlines() if line.startswith(marker)]
        super().__init__(lines[-1][len(marker):] if lines else message)


def checked_image_loader(path):
    """torchvision's default image loader; a file it cannot decode raises UnreadableImage naming the file.

    Checked when read, not up front: scanning ImageNet's 1.28M files before training would take longer
    than an epoch on many disks."""
    try:
        return datasets.folder.default_loader(path)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        if isinstance(err, Image.UnidentifiedImageError):
            reason = "not a format PIL can identify"
        else:
            reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'corrupt'}"
        raise UnreadableImage(f"cannot read image {path} ({reason}); replace or remove the file") from None


def _image_folder(directory, transform):
    try:
        return datasets.ImageFolder(directory, transform=transform, loader=checked_image_loader)
    except FileNotFoundError as err:
        raise UserError(f"{directory}: {str(err).rstrip('.')}; train/ and val/ each need one folder per "
                        f"class with at least one image in it") from None


def image_folder_datasets(root, crop_size=224, resize_size=256):
    """(train, val) ImageFolder datasets of ROOT/train and ROOT/val (one folder per class, the same classes
    in both) with the ImageNet transforms."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FlagError("data", f"{{flag}} {root} is not a directory; give the folder that holds train/ and val/")
    for split in ("train", "val"):
        if not os.path.isdir(os.path.join(root, split)):
            raise FlagError("data", f"{{flag}} {root} has no {split}/ folder; it must hold train/ and val/, each "
                                    f"with one folder of images per class (scripts/make_imagefolder.py writes a small one)")
    train_tf, eval_tf = imagenet_transforms(crop_size, resize_size)
    train_set = _image_folder(os.path.join(root, "train"), train_tf)
    val_set = _image_folder(os.path.join(root, "val"), eval_tf)
    if train_set.classes != val_set.classes:
        only_train = sorted(set(train_set.classes) - set(val_set.classes))
        only_val = sorted(set(val_set.classes) - set(train_set.classes))
        raise FlagError("data", f"{{flag}} {root}: train/ and val/ hold different classes (only in train: "
                                f"{only_train[:3]}, only in val: {only_val[:3]}); both need the same class folders")
    return train_set, val_set
