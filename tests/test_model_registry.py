"""The model registry: kinds, aliases and canonical names (CIFAR and stripe-wise architectures)."""
import pytest

from filtergraft.errors import UserError
from filtergraft.models import canonical_model_name, create_model, model_names, register_model
from filtergraft.models.stripe_resnet import StripeResNet18, StripeResNet56
from filtergraft.models.stripe_vgg import StripeVGG

STRIPE = {"stripe_vgg16": "VGG", "stripe_resnet56": "ResNet56", "stripe_resnet18": "ResNet18"}


def test_stripe_models_are_listed_apart_from_cifar_ones():
    assert model_names("stripe") == sorted(STRIPE)
    assert model_names("stripe", aliases=True) == sorted(STRIPE) + sorted(STRIPE.values())
    assert not set(STRIPE) & set(model_names())
    assert set(model_names(None)) == set(model_names()) | set(STRIPE)


@pytest.mark.parametrize("name", sorted(STRIPE))
def test_aliases_resolve_to_registered_names(name):
    assert canonical_model_name(STRIPE[name], kind="stripe") == name
    assert canonical_model_name(name, kind="stripe") == name
    assert canonical_model_name(STRIPE[name], kind=None) == name


def test_create_model_by_alias_builds_the_stripe_networks():
    assert type(create_model("ResNet56", 7, kind="stripe")) is StripeResNet56
    assert create_model("stripe_resnet56", 7, kind="stripe").fc.out_features == 7
    assert type(create_model("VGG", kind="stripe")) is StripeVGG
    assert create_model("ResNet18", 1000, kind="stripe").fc.out_features == 1000
    assert type(create_model("stripe_resnet18", 5, kind=None)) is StripeResNet18


def test_lookups_stay_within_their_kind():
    with pytest.raises(UserError, match="stripe model, not a cifar one") as info:
        create_model("VGG", 10)
    assert "resnet56" in str(info.value) and "stripe_vgg16" not in str(info.value)
    with pytest.raises(UserError, match="cifar model, not a stripe one"):
        canonical_model_name("resnet56", kind="stripe")
    with pytest.raises(UserError, match="unknown model 'vgg'") as info:
        canonical_model_name("vgg", kind="stripe")
    assert "stripe_vgg16 (VGG)" in str(info.value)


def test_names_and_aliases_are_registered_once():
    with pytest.raises(ValueError, match="already registered"):
        register_model(lambda num_classes=10: None, name="other", aliases=("VGG",))
    with pytest.raises(ValueError, match="already registered"):
        register_model(lambda num_classes=10: None, name="resnet56")
    with pytest.raises(ValueError, match="kind"):
        register_model(lambda num_classes=10: None, name="unused_name", kind="imagenet")
    assert "other" not in model_names(None) and "unused_name" not in model_names(None)
