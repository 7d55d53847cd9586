"""Write a small ImageFolder of real images: scikit-learn's handwritten digits as PNG files, laid out like
ImageNet (OUT_DIR/train/<class>/*.png and OUT_DIR/val/<class>/*.png), to try the ImageNet path offline.

    python scripts/make_imagefolder.py /tmp/digits --size 64 --per-class-train 20 --per-class-val 10
    python grafting_imagenet/grafting.py --data /tmp/digits -a resnet18 --crop-size 56 --resize-size 64 -j 0
"""
import argparse
import os
from pathlib import Path

import numpy as np
from PIL import Image

from filtergraft.data import digits_arrays
from filtergraft.errors import UserError, exit_on_user_error


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Write scikit-learn's digits as a small ImageFolder (train/ and val/)")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="new or empty folder to write into")
    parser.add_argument("--size", type=int, default=32, help="side of the square PNG images (the digits are 32x32)")
    parser.add_argument("--per-class-train", type=int, default=None, help="training images per class (default: all)")
    parser.add_argument("--per-class-val", type=int, default=None, help="validation images per class (default: all)")
    return parser.parse_args(argv)


def write_split(directory, images, labels, per_class, size):
    """Write the first `per_class` images of each class as directory/<class>/<index>.png; returns the count."""
    labels = np.asarray(labels)
    written = 0
    for label in np.unique(labels):
        chosen = np.flatnonzero(labels == label)[:per_class]
        folder = directory / str(label)
        folder.mkdir(parents=True)
        for index in chosen:
            image = Image.fromarray(images[index])
            if size != image.width:
                image = image.resize((size, size), Image.Resampling.BILINEAR)
            image.save(folder / f"{index:04d}.png")
        written += len(chosen)
    return written


def check_counts(name, labels, per_class):
    """The largest per-class count every class can give; a larger request is a UserError."""
    available = int(np.bincount(np.asarray(labels)).min())
    if per_class is not None and not 1 <= per_class <= available:
        raise UserError(f"--per-class-{name} must be between 1 and {available} (the smallest class of the "
                        f"digits' {name} split), not {per_class}")


def main(argv=None):
    args = parse_args(argv)
    if args.size < 1:
        raise UserError(f"--size must be positive, not {args.size}")
    out = Path(args.out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not an empty folder; choose a new OUT_DIR")
    (x_train, y_train), (x_val, y_val) = digits_arrays()
    check_counts("train", y_train, args.per_class_train)
    check_counts("val", y_val, args.per_class_val)
    try:
        n_train = write_split(out / "train", x_train, y_train, args.per_class_train, args.size)
        n_val = write_split(out / "val", x_val, y_val, args.per_class_val, args.size)
    except OSError as err:
        raise UserError(f"cannot write to {out} ({err.strerror}); choose a writable OUT_DIR") from None
    print(f"wrote {n_train} training and {n_val} validation images of {len(np.unique(y_train))} classes "
          f"({args.size}x{args.size} PNG) to {os.path.abspath(out)}")


if __name__ == "__main__":
    with exit_on_user_error("make_imagefolder.py"):
        main()
