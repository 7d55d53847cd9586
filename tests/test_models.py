"""The CIFAR architectures: names, sizes, output shapes and the conv -> BN order others rely on."""
import pytest
import torch
import torch.nn as nn

from filtergraft.errors import UserError
from filtergraft.models import create_model, model_names
from filtergraft.models.resnet_cifar import LEAKY_SLOPE, DownsampleA, ResNetCifar

RESNETS = ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]
LEAKY = [f"{name}_leaky" for name in RESNETS]
EXPECTED = RESNETS + ["resnet1202"] + LEAKY + ["mobilenetv2", "vgg11", "vgg13", "vgg16", "vgg19",
                                                "wrn28_10"]
# Too big to run a forward pass on in the test budget; their heads are checked instead.
BIG = {"resnet1202", "wrn28_10"}

# Measured for 10 classes; the first five are the paper's 0.27M/0.46M/0.66M/0.85M/1.7M.
PARAMS = {
    "resnet20": 269_722,
    "resnet32": 464_154,
    "resnet44": 658_586,
    "resnet56": 853_018,
    "resnet110": 1_727_962,
    "mobilenetv2": 2_296_922,
    "vgg11": 9_231_114,
    "vgg13": 9_416_010,
    "vgg16": 14_728_266,
    "vgg19": 20_040_522,
}
PAPER_M = {"resnet20": 0.27, "resnet32": 0.46, "resnet44": 0.66, "resnet56": 0.85}


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def head(model):
    """The final Linear layer of a model."""
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def test_every_expected_model_is_registered():
    assert set(EXPECTED) <= set(model_names())


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_counts(name):
    count = n_params(create_model(name, 10))
    assert count == PARAMS[name]
    if name in PAPER_M:
        assert round(count / 1e6, 2) == PAPER_M[name]


def test_resnet110_and_1202_sizes():
    assert round(PARAMS["resnet110"] / 1e6, 1) == 1.7
    big = create_model("resnet1202", 10)
    assert round(n_params(big) / 1e6, 1) == 19.4
    assert head(big).out_features == 10


def test_wrn28_10_size_and_forward():
    model = create_model("wrn28_10", 10)
    assert round(n_params(model) / 1e6, 1) == 36.5
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize("name", sorted(BIG))
def test_big_models_heads_for_100_classes(name):
    assert head(create_model(name, 100)).out_features == 100


@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("name", [n for n in EXPECTED if n not in BIG])
def test_forward_shape(name, num_classes):
    model = create_model(name, num_classes)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", LEAKY)
def test_leaky_variants_use_only_leaky_relu(name):
    model = create_model(name, 10)
    plain = create_model(name[: -len("_leaky")], 10)
    leaky = [m for m in model.modules() if isinstance(m, nn.LeakyReLU)]
    assert leaky and all(m.negative_slope == LEAKY_SLOPE for m in leaky)
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    # Same class and same architecture, only the activation differs.
    assert type(model) is type(plain) is ResNetCifar
    assert n_params(model) == n_params(plain)


def test_unknown_name_lists_valid_names():
    with pytest.raises(UserError) as info:
        create_model("resnet57", 10)
    message = str(info.value)
    assert "resnet57" in message
    for name in EXPECTED:
        assert name in message


@pytest.mark.parametrize("name", RESNETS)
def test_option_a_shortcut_is_parameter_free(name):
    model = create_model(name, 10)
    layered = sum(n_params(m) for m in model.modules()
                  if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear)))
    assert layered == n_params(model)
    # Only 3x3 convs: no projection shortcut anywhere.
    assert all(m.kernel_size == (3, 3) for m in model.modules() if isinstance(m, nn.Conv2d))
    assert sum(isinstance(m, DownsampleA) for m in model.modules()) == 2


def test_option_a_shortcut_subsamples_and_zero_pads():
    x = torch.randn(2, 16, 8, 8)
    out = DownsampleA(16, 32)(x)
    assert out.shape == (2, 32, 4, 4)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    assert not out[:, :8].any() and not out[:, 24:].any()


def _layers(model):
    """(name, module) of the Conv2d, BatchNorm2d and Linear modules in named_modules() order."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear))]


@pytest.mark.parametrize("name", EXPECTED)
def test_each_conv_is_followed_by_its_batchnorm(name):
    model = create_model(name, 10)
    layers = _layers(model)
    # WRN is pre-activation: its projection shortcut convs feed an add with no BN of their own.
    exempt = set()
    if name.startswith("wrn"):
        exempt = {n for n, _ in model.named_modules() if n.endswith("shortcut")}
        assert len(exempt) == 3
    convs = 0
    for i, (conv_name, conv) in enumerate(layers):
        if not isinstance(conv, nn.Conv2d) or conv_name in exempt:
            continue
        convs += 1
        bn_name, bn = layers[i + 1]
        assert isinstance(bn, nn.BatchNorm2d), f"{name}: {conv_name} is followed by {bn_name}"
        assert bn.num_features == conv.out_channels, f"{name}: {conv_name} -> {bn_name}"
    assert convs > 0
    if not name.startswith("wrn"):
        # Outside the pre-activation WRN the BN is the very next entry of named_modules().
        modules = list(model.named_modules())
        for i, (conv_name, conv) in enumerate(modules):
            if isinstance(conv, nn.Conv2d):
                assert isinstance(modules[i + 1][1], nn.BatchNorm2d), f"{name}: {conv_name}"


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2", "vgg16"])
def test_batchnorm_really_consumes_the_conv_output(name):
    # The registration order must match the data flow: hook each pair and compare tensors.
    model = create_model(name, 10).eval()
    seen = {}
    modules = list(model.named_modules())
    hooks = []
    for n, m in modules:
        if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)):
            hooks.append(m.register_forward_hook(
                lambda mod, inp, out, n=n: seen.__setitem__(n, (inp[0], out))))
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    for h in hooks:
        h.remove()
    for i, (n, m) in enumerate(modules):
        if isinstance(m, nn.Conv2d):
            bn_name = modules[i + 1][0]
            assert seen[bn_name][0] is seen[n][1], f"{name}: {bn_name} does not consume {n}"


def test_cifar_feature_map_sizes():
    x = torch.randn(1, 3, 32, 32)
    mbv2 = create_model("mobilenetv2", 10).eval()
    with torch.no_grad():
        # The CIFAR strides leave a 4x4 map before the pool (1x1 in the ImageNet network).
        assert mbv2.layers(mbv2.relu(mbv2.bn1(mbv2.conv1(x)))).shape == (1, 320, 4, 4)
        assert create_model("vgg16", 10).eval().features(x).shape == (1, 512, 1, 1)
