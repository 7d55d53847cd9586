"""ImageNet architectures from torchvision: building any classification model for a class count and crop
size, its pretrained weights from the local torch hub cache, and a check that a crop fits the model."""
import os
import pickle
import zipfile
from urllib.parse import urlparse

import torch
import torchvision

from ..checkpoint import load_checkpoint
from ..errors import UserError

CROP_SIZE, RESIZE_SIZE = 224, 256
# In training mode these return (logits, auxiliary logits...); the papers train the plain network.
AUX_HEADS = ("googlenet", "inception_v3")
# Architectures whose layers are built for one input size, and the constructor argument that sets it.
SIZED = {"vit_": "image_size", "maxvit_": "input_size"}


def arch_names():
    """torchvision's classification models."""
    return torchvision.models.list_models(module=torchvision.models)


def check_arch(name):
    """Refuse, with the list of valid names, an `--arch` torchvision does not have."""
    names = arch_names()
    if name not in names:
        raise UserError(f"unknown --arch '{name}'; torchvision's classification models are: {', '.join(names)}")


def pretrained_weights(arch):
    """torchvision's default weights of `arch`, when their file is already in the local torch hub cache and
    holds data alone: it is read with weights_only=True first, since torchvision's own loading would run any
    code a replaced cache file carries."""
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(weights.url).path))
    if not os.path.isfile(path):
        raise UserError(f"--pretrained: {weights} is not in the torch hub cache and this run does not download; "
                        f"download {weights.url} to {path} first")
    load_checkpoint(path, "--pretrained: the cached file")
    return weights


def build_model(arch, num_classes, crop_size, weights=None):
    """The torchvision model `arch`: with `weights` (and their classes), or freshly initialised."""
    kwargs = {"aux_logits": False} if arch in AUX_HEADS else {}
    sized = next((arg for prefix, arg in SIZED.items() if arch.startswith(prefix)), None)
    if weights is not None:
        if num_classes != len(weights.meta["categories"]):
            raise UserError(f"--pretrained: {weights} classifies {len(weights.meta['categories'])} classes but "
                            f"--data has {num_classes}; drop --pretrained or use data with those classes")
        expected = weights.transforms().crop_size[0]
        if sized and crop_size != expected:
            raise UserError(f"--pretrained: {arch} with {weights} takes {expected}x{expected} inputs; "
                            f"use --crop-size {expected}")
        try:
            return torchvision.models.get_model(arch, weights=weights, **kwargs)
        except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
            raise UserError(f"--pretrained: the cached file of {weights} could not be loaded "
                            f"({str(err).splitlines()[0]}); download it again") from None
    if arch in AUX_HEADS:
        kwargs["init_weights"] = True
    if sized:
        kwargs[sized] = crop_size if sized == "image_size" else (crop_size, crop_size)
    try:
        return torchvision.models.get_model(arch, num_classes=num_classes, **kwargs)
    except (AssertionError, ValueError) as err:
        raise UserError(f"{arch} cannot be built for {num_classes} classes at --crop-size {crop_size}: {err}") from None


def check_input_size(model, arch, crop_size):
    """One forward pass of a blank crop in eval mode (running statistics untouched): a crop too small for
    the architecture is refused with one line before anything is written."""
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, crop_size, crop_size))
    except RuntimeError as err:
        raise UserError(f"{arch} cannot take {crop_size}x{crop_size} inputs ({str(err).splitlines()[0]}); "
                        f"use a larger --crop-size") from None
    finally:
        model.train()


def crop_sizes(crop_size, resize_size, weights=None):
    """(crop, resize) of training and evaluation: as given, else the pretrained weights', else 224 and 256."""
    transforms = weights.transforms() if weights is not None else None
    crop = crop_size or (transforms.crop_size[0] if transforms else CROP_SIZE)
    resize = resize_size or (transforms.resize_size[0] if transforms else RESIZE_SIZE)
    return crop, resize


def imagenet_model(arch, num_classes, crop_size, weights=None):
    """build_model, and at a crop other than 224 (which every torchvision model takes) check_input_size,
    since smaller crops vanish inside some architectures."""
    model = build_model(arch, num_classes, crop_size, weights)
    if crop_size != CROP_SIZE:
        check_input_size(model, arch, crop_size)
    return model
