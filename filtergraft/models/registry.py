"""A name -> constructor registry for the CIFAR architectures, in the spirit of timm's."""
from ..errors import UserError

_MODELS = {}


def register_model(fn):
    """Register a constructor `fn(num_classes) -> nn.Module` under its function name."""
    _MODELS[fn.__name__] = fn
    return fn


def model_names():
    """All registered model names, sorted."""
    return sorted(_MODELS)


def create_model(name, num_classes=10):
    """Build the registered model `name` for `num_classes` classes."""
    if name not in _MODELS:
        raise UserError(f"unknown model '{name}'; choose one of: {', '.join(model_names())}")
    return _MODELS[name](num_classes=num_classes)
