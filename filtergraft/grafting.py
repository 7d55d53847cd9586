"""Filter grafting (SPEC §3): information criteria, the graft coefficient, and grafting a network with a
peer's weights layer by layer or filter by filter, or with scions from noise or from itself."""
import math
import operator
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import fx, nn

from .analysis import filter_l1_norms, traced_graph

BINS = 10
# The papers' A and c of the coefficient α (SPEC §3), the defaults of every grafting script's --a and --c.
DEFAULT_A = 0.4
DEFAULT_C = 500.0
# How layer_entropy bins: as the released code (the default) or corrected (SPEC §3).
ENTROPY_BINS = ("release", "closed")
LAYER_TYPES = (nn.Conv2d, nn.Linear)
NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm)
# Modules that pass channel j of their input to channel j of their output without mixing channels.
CHANNELWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
               nn.Dropout, nn.Flatten, nn.Identity)
CHANNELWISE_FUNCTIONS = (torch.relu, torch.flatten, nn.functional.relu, nn.functional.avg_pool2d,
                         nn.functional.max_pool2d, nn.functional.adaptive_avg_pool2d)


def release_bin_counts(weight, bins=BINS):
    """n_k = #{x : min + k·s ≤ x < min + (k+1)·s}, s = (max − min)/bins, every bound in the weight's dtype."""
    values = weight.detach().flatten()
    low, high = values.min(), values.max()
    step = (high - low) / bins
    # Each bound as the release's loop made it: k·s, then + min, two roundings (separate kernels, no FMA).
    edges = torch.arange(bins + 1, dtype=values.dtype, device=values.device).mul(step).add(low)
    # The number of bounds ≤ x is k + 1 exactly when x lies in bin k; bins + 1 means in none (the maximum,
    # whenever min + bins·s rounds to at most it).
    index = torch.bucketize(values, edges, right=True)
    return torch.bincount(index, minlength=bins + 2)[1:bins + 1]


def _release_entropy(weight, bins):
    """H = −Σ p_k ln p_k, p_k = n_k / n over all n values (release_bin_counts), in float32 bin by bin."""
    p = release_bin_counts(weight, bins).float() / weight.numel()
    terms = torch.where(p > 0, p * p.log(), torch.zeros_like(p))
    entropy = torch.zeros((), dtype=p.dtype, device=p.device)
    for term in terms:  # the release's order of summation; an empty bin adds nothing
        entropy = entropy - term
    return entropy.double()


def _closed_entropy(weight, bins):
    """H = −Σ p_k ln p_k over `bins` closed bins of [min, max] (the maximum in the last), in float64."""
    values = weight.detach().double().flatten()
    low, high = values.min(), values.max()
    span = (high - low).clamp_min(torch.finfo(values.dtype).tiny)
    index = ((values - low) / span * bins).long().clamp_(0, bins - 1)
    p = torch.bincount(index, minlength=bins).double() / values.numel()
    entropy = -(p * p.clamp_min(1e-300).log()).sum()
    return torch.where(high > low, entropy, torch.zeros_like(entropy))


def layer_entropy(weight, bins=BINS, binning="release"):
    """H = −Σ p_k ln p_k of the layer's values in `bins` bins of [min, max], binned as the release
    ("release", SPEC §3) or in closed bins ("closed"); a float64 scalar tensor, 0 for a constant tensor."""
    if binning == "release":
        return _release_entropy(weight, bins)
    if binning == "closed":
        return _closed_entropy(weight, bins)
    raise ValueError(f"entropy binning must be one of {ENTROPY_BINS}, not {binning!r}")


def l1_information(weight):
    """The L1 criterion: mean |w| of the layer."""
    return weight.detach().double().abs().mean()


CRITERIA = {"entropy": layer_entropy, "l1": l1_information}


def graft_coefficient(h_self, h_peer, a=DEFAULT_A, c=DEFAULT_C):
    """α = (A/π)·arctan(c·(H_self − H_peer)) + 0.5, rounded to two decimals (as the reference release).

    Works on floats and on tensors (elementwise, without leaving the device)."""
    if torch.is_tensor(h_self) or torch.is_tensor(h_peer):
        alpha = a / math.pi * torch.atan(c * (torch.as_tensor(h_self) - torch.as_tensor(h_peer))) + 0.5
        return torch.round(alpha * 100) / 100
    return round(a / math.pi * math.atan(c * (h_self - h_peer)) + 0.5, 2)


@dataclass
class GraftUnit:
    """One layer for grafting: the tensor its information is measured on and every tensor mixed with
    its coefficient (its bias, the BatchNorm that follows it)."""

    name: str
    weight: str
    members: list = field(default_factory=list)
    norm: str = None  # module name of the BatchNorm directly after the layer
    next_layers: list = field(default_factory=list)  # layers fed channel-wise by that BatchNorm


def _float_tensors(module, prefix):
    """State-dict keys of a module's own floating parameters and buffers (not its children's)."""
    prefix = f"{prefix}." if prefix else ""  # the root module's own tensors (ViT's class_token) have no prefix
    keys = [f"{prefix}{n}" for n, p in module.named_parameters(recurse=False) if p.is_floating_point()]
    keys += [f"{prefix}{n}" for n, b in module.named_buffers(recurse=False)
             if b is not None and b.is_floating_point()]
    return keys


def _is_channelwise(node, modules):
    if node.op == "call_module":
        return isinstance(modules[node.target], CHANNELWISE)
    if node.op == "call_function":
        return node.target in CHANNELWISE_FUNCTIONS
    return node.op == "call_method" and node.target in ("relu", "flatten", "view", "reshape", "relu_")


def _graph_links(graph, modules):
    """From an fx graph: {norm name: layer name} for each BatchNorm fed directly by a conv/linear, and
    {norm name: [layer names]} for the layers its output reaches through channel-wise operations."""
    follows, feeds = {}, {}
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], NORM_TYPES):
            continue
        source = node.args[0]
        if (isinstance(source, fx.Node) and source.op == "call_module"
                and isinstance(modules[source.target], LAYER_TYPES) and len(source.users) == 1):
            follows[node.target] = source.target
        reached, frontier = [], list(node.users)
        while frontier:
            user = frontier.pop()
            if user.op == "call_module" and isinstance(modules[user.target], LAYER_TYPES):
                reached.append(user.target)
            elif _is_channelwise(user, modules) and user.target is not operator.add:
                frontier.extend(user.users)
            else:
                reached = None
                break
        if reached:
            feeds[node.target] = reached
    return follows, feeds


def _order_links(model):
    """Fallback when tracing fails: a BatchNorm registered right after a layer with as many channels follows it."""
    follows, previous = {}, None
    for name, module in model.named_modules():
        if isinstance(module, NORM_TYPES) and previous is not None:
            prev_name, prev = previous
            out = prev.out_channels if isinstance(prev, nn.Conv2d) else prev.out_features
            if out == module.num_features:
                follows[name] = prev_name
        if isinstance(module, LAYER_TYPES + NORM_TYPES) or len(list(module.children())) == 0:
            previous = (name, module) if isinstance(module, LAYER_TYPES) else None
    return follows, {}


def graft_units(model):
    """Every Conv2d and Linear as a unit with its bias and following BatchNorm, found by module type;
    any other module with floating tensors (an orphan BatchNorm, say) is a unit of its own."""
    modules = dict(model.named_modules())
    graph = traced_graph(model)
    follows, feeds = _graph_links(graph, modules) if graph is not None else _order_links(model)
    norm_of = {layer: norm for norm, layer in follows.items()}
    units, claimed = [], set()
    for name, module in modules.items():
        if isinstance(module, LAYER_TYPES):
            unit = GraftUnit(name, f"{name}.weight", _float_tensors(module, name))
            if name in norm_of:
                unit.norm = norm_of[name]
                unit.members += _float_tensors(modules[unit.norm], unit.norm)
                unit.next_layers = feeds.get(unit.norm, [])
                claimed.add(unit.norm)
            units.append(unit)
    for name, module in modules.items():
        if name in claimed or isinstance(module, LAYER_TYPES):
            continue
        members = _float_tensors(module, name)
        if members:
            weight = f"{name}.weight" if f"{name}.weight" in members else members[0]
            units.append(GraftUnit(name, weight, members))
    return units


def _kind(modules, key):
    """What a state-dict tensor is, for the log: 'conv weight', 'linear bias', 'BatchNorm tensor', ..."""
    name, _, tensor = key.rpartition(".")
    module = modules[name]
    if isinstance(module, NORM_TYPES):
        return "BatchNorm tensor"
    if isinstance(module, nn.Conv2d):
        return f"conv {tensor}"
    if isinstance(module, nn.Linear):
        return f"linear {tensor}"
    return f"{type(module).__name__} {tensor}"


def _by_kind(modules, keys):
    """'8 conv weights, 32 BatchNorm tensors': how many of `keys` are of each kind, in order of appearance."""
    counts = {}
    for key in keys:
        kind = _kind(modules, key)
        counts[kind] = counts.get(kind, 0) + 1
    plural = lambda word: word + ("es" if word.endswith("s") else "s")  # noqa: E731
    return ", ".join(f"{n} {plural(kind) if n > 1 else kind}" for kind, n in counts.items())


def _input_coefficients(w_in, conv):
    """The [out, in/groups] coefficients of a conv's weight from per-input-channel coefficients w_in:
    element [j, k] reads input channel k of filter j's group."""
    groups = conv.groups
    per_group = w_in.view(groups, 1, conv.in_channels // groups)
    return per_group.expand(groups, conv.out_channels // groups, -1).reshape(conv.out_channels, -1)


class Grafter:
    """Grafts a model with a peer's pre-graft weights at the end of each epoch (SPEC §3).

    At level 'layer' every floating tensor is mixed, each unit's with the α of its own layer. With
    `conv_only`, and always at level 'filter' (the release's VGG script), only conv weights and the
    BatchNorms after them are mixed; conv biases, Linear layers and any other tensor stay the network's own."""

    def __init__(self, model, a=DEFAULT_A, c=DEFAULT_C, criterion="entropy", level="layer",
                 entropy_bins="release", conv_only=False):
        if entropy_bins not in ENTROPY_BINS:
            raise ValueError(f"entropy_bins must be one of {ENTROPY_BINS}, not {entropy_bins!r}")
        self.model = model
        self.a = a
        self.c = c
        self.information = CRITERIA[criterion]
        if criterion == "entropy":
            self.information = partial(layer_entropy, binning=entropy_bins)
        self.level = level
        self.conv_only = conv_only or level == "filter"
        self.modules = dict(model.named_modules())
        units = graft_units(model)
        # (unit, the state-dict keys mixed with its coefficient), for the units that mix anything
        self.plan = [(unit, keys) for unit in units if (keys := self._mixed_keys(unit))]
        self.mixed = [key for _, keys in self.plan for key in keys]
        mixed = set(self.mixed)
        self.kept = [key for unit in units for key in unit.members if key not in mixed]

    @classmethod
    def for_record(cls, model, record):
        """The Grafter of a run record (record.RunRecord): its a, c, criterion, level, entropy_bins, conv_only."""
        return cls(model, record.a, record.c, record.criterion, record.level, record.entropy_bins,
                   bool(record.conv_only))

    def _mixed_keys(self, unit):
        if not self.conv_only:
            return unit.members
        if not isinstance(self.modules[unit.name], nn.Conv2d):
            return []
        return [key for key in unit.members if key != f"{unit.name}.bias"]

    def describe(self):
        """One line for the log: how many tensors the graft mixes, by kind, and which stay the network's own."""
        if not self.kept:
            kept = "nothing"
        elif len(self.kept) <= 4:
            kept = ", ".join(self.kept)
        else:
            kept = f"{len(self.kept)} tensors ({_by_kind(self.modules, self.kept)})"
        mixed = f"{len(self.mixed)} tensors ({_by_kind(self.modules, self.mixed)})"
        return f"grafting mixes {mixed}; keeps its own: {kept}"

    @torch.no_grad()
    def graft(self, peer_state):
        """W ← α·W + (1 − α)·W_peer for every mixed tensor (per filter at level 'filter'); returns the
        records [{name, alpha, h_self, h_peer}] of the layers mixed."""
        if not self.plan:
            return []
        own = self.model.state_dict()
        device = own[self.plan[0][0].weight].device
        peer = {key: peer_state[key].to(device, non_blocking=True) for key in self.mixed}
        units = [unit for unit, _ in self.plan]
        h_self = torch.stack([self.information(own[u.weight]).double() for u in units])
        h_peer = torch.stack([self.information(peer[u.weight]).double() for u in units])
        alphas = graft_coefficient(h_self, h_peer, self.a, self.c)
        coefficients = {key: alpha.to(own[key].dtype) for (_, keys), alpha in zip(self.plan, alphas) for key in keys}
        if self.level == "filter":
            coefficients.update(self._filter_coefficients(own, peer))
        for key, coef in coefficients.items():
            own[key].mul_(coef).add_((1 - coef) * peer[key])
        records = zip(units, alphas.tolist(), h_self.tolist(), h_peer.tolist())
        layers = [{"name": u.name, "alpha": alpha, "h_self": hs, "h_peer": hp} for u, alpha, hs, hp in records]
        if self.level == "filter":
            for record, unit in zip(layers, units):
                if coefficients[unit.weight].dim() > 0:
                    record["alpha"] = float(coefficients[unit.weight].double().mean())
        return layers

    def _filter_coefficients(self, own, peer):
        """Per-channel coefficients w_j = |γ_self,j| / (|γ_self,j| + |γ_peer,j|) of the BatchNorm after each
        conv: its channel j and the conv's output filter j take w_j, input channel k of the convs it feeds
        takes w_k, so conv element [j, k] takes w_j·w_k (the release mixed inputs, then outputs)."""
        out_coef, in_coef = {}, {}
        for unit, _ in self.plan:
            if unit.norm is None or f"{unit.norm}.weight" not in own:  # no BatchNorm, or one without γ
                continue
            gamma_self = own[f"{unit.norm}.weight"].abs()
            gamma_peer = peer[f"{unit.norm}.weight"].abs()
            total = gamma_self + gamma_peer
            w = torch.where(total > 0, gamma_self / total.clamp_min(1e-12), torch.full_like(total, 0.5))
            out_coef[unit.name] = w
            for layer in unit.next_layers:
                in_coef[layer] = w
        coefficients = {}
        for unit, keys in self.plan:
            w_out, w_in = out_coef.get(unit.name), in_coef.get(unit.name)
            if w_out is None and w_in is None:
                continue  # a conv no BatchNorm touches keeps the α of its layer
            weight = own[unit.weight]
            coef = torch.ones(weight.shape[:2], dtype=weight.dtype, device=weight.device)
            if w_out is not None:
                coef = coef * w_out.view(-1, 1)
            if w_in is not None:
                coef = coef * _input_coefficients(w_in, self.modules[unit.name])
            coefficients[unit.weight] = coef.view(*weight.shape[:2], *[1] * (weight.dim() - 2))
            if w_out is not None:
                for key in keys:
                    if key != unit.weight:
                        coefficients[key] = w_out
        return coefficients


def _conv_layers(model):
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


@torch.no_grad()
def graft_noise(model, sigma, threshold):
    """Noise scion: W_f ← W_f + N(0, σ²) for every conv filter f with L1 norm < threshold."""
    layers = []
    for name, conv in _conv_layers(model):
        invalid = filter_l1_norms(conv.weight) < threshold
        noise = torch.randn_like(conv.weight) * sigma
        conv.weight.add_(noise * invalid.view(-1, 1, 1, 1))
        layers.append({"name": name, "invalid": int(invalid.sum()), "sigma": sigma})
    return layers


@torch.no_grad()
def graft_internal(model, threshold, a=DEFAULT_A, c=DEFAULT_C, entropy_bins="release"):
    """Internal scion: in each conv, the k-th weakest of the filters with L1 norm < threshold is grafted
    with the k-th strongest filter, W ← α·W + (1 − α)·W_strong, α from the two filters' entropies
    (binned as `entropy_bins`)."""
    layers = []
    for name, conv in _conv_layers(model):
        weight = conv.weight
        order = filter_l1_norms(weight).argsort()
        invalid = order[filter_l1_norms(weight)[order] < threshold]
        count = min(invalid.numel(), weight.shape[0] - invalid.numel())
        weak, strong = invalid[:count], order.flip(0)[:count]
        if count:
            h_weak = torch.stack([layer_entropy(weight[i], binning=entropy_bins) for i in weak])
            h_strong = torch.stack([layer_entropy(weight[i], binning=entropy_bins) for i in strong])
            alpha = graft_coefficient(h_weak, h_strong, a, c).to(weight.dtype).view(-1, 1, 1, 1)
            weight[weak] = alpha * weight[weak] + (1 - alpha) * weight[strong]
        layers.append({"name": name, "invalid": int(invalid.numel()), "grafted": count})
    return layers
