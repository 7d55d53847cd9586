"""The architectures: CIFAR networks and stripe-wise networks; importing this package registers them all."""
from .registry import KINDS, canonical_model_name, create_model, model_names, register_model
from . import resnet_cifar, mobilenetv2, vgg, wrn, stripe_vgg, stripe_resnet  # noqa: F401  (imported for registration)
