"""One name -> constructor registry for every architecture, in the spirit of timm's.

Each model has one registered name, optional aliases (the stripe-wise release's `VGG`, `ResNet56`,
`ResNet18`) and a kind: "cifar" for the CIFAR architectures that the grafting scripts train,
"stripe" for the Filter Skeleton networks of stripe-wise pruning. Names and aliases share one
namespace; lookups are restricted to one kind, CIFAR by default, so a grafting script never builds a
stripe network by accident.
"""
from ..errors import UserError

KINDS = ("cifar", "stripe")

_MODELS = {}   # name -> constructor
_KIND = {}     # name -> kind
_ALIASES = {}  # alias -> name


def register_model(fn=None, *, name=None, aliases=(), kind="cifar"):
    """Register `fn(num_classes) -> nn.Module` under `name` (default: its function name) and `aliases`.

    Usable bare (`@register_model`), with options (`@register_model(aliases=("VGG",), kind="stripe")`),
    or called directly; returns `fn`.
    """
    if fn is None:
        return lambda f: register_model(f, name=name, aliases=aliases, kind=kind)
    if kind not in KINDS:
        raise ValueError(f"model kind must be one of {KINDS}, got {kind!r}")
    name = name or fn.__name__
    for key in (name, *aliases):
        if key in _MODELS or key in _ALIASES:
            raise ValueError(f"model name or alias {key!r} is already registered")
    _MODELS[name], _KIND[name] = fn, kind
    _ALIASES.update(dict.fromkeys(aliases, name))
    return fn


def model_names(kind="cifar", aliases=False):
    """Registered names of `kind` (every kind for None), sorted; with `aliases`, their aliases after them."""
    names = sorted(n for n in _MODELS if kind is None or _KIND[n] == kind)
    if aliases:
        names += sorted(a for a, n in _ALIASES.items() if n in names)
    return names


def canonical_model_name(name, kind="cifar"):
    """The registered name of model `name` or of its alias, if it is of `kind` (any for None)."""
    canonical = _ALIASES.get(name, name)
    if canonical in _MODELS and (kind is None or _KIND[canonical] == kind):
        return canonical
    valid = ", ".join(_described(n) for n in model_names(kind))
    if canonical in _MODELS:
        raise UserError(f"'{name}' is a {_KIND[canonical]} model, not a {kind} one; choose one of: {valid}")
    raise UserError(f"unknown model '{name}'; choose one of: {valid}")


def create_model(name, num_classes=10, kind="cifar"):
    """Build model `name` (a registered name or alias of `kind`, any for None) for `num_classes` classes."""
    return _MODELS[canonical_model_name(name, kind)](num_classes=num_classes)


def _described(name):
    """`name`, with its aliases in parentheses when it has any."""
    aliases = sorted(a for a, n in _ALIASES.items() if n == name)
    return f"{name} ({', '.join(aliases)})" if aliases else name
