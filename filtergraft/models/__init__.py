"""CIFAR architectures; importing this package registers them all with `create_model`."""
from .registry import create_model, model_names, register_model
from . import resnet_cifar, mobilenetv2, vgg, wrn  # noqa: F401  (imported for registration)
