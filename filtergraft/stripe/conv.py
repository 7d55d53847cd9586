"""Stripe-wise inference (SPEC §5): `StripeConv`, which stores and computes only the kept stripes, and the
choice between its stripe-wise and dense forms.

Memory layouts in a pruned network: a `StripeConv` in stripe mode works on channel-major (C, B, H, W)
memory and returns its (B, N, H, W) result as a transposed view of such memory, so consecutive stripe
layers hand each other activations without copies; in dense mode it runs oneDNN's channels_last
conv. Every module still sees ordinary (B, C, H, W) shapes, so any layout flows through any module.
"""
import contextlib
import math
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

# CHUNK_BYTES is a setting of the package (filtergraft.stripe.CHUNK_BYTES), read on every forward so that
# setting it there takes effect; this import, made while the package initialises, binds the package only.
from .. import stripe as package
from ..timing import device_clock

MODES = ("stripe", "dense")

# Cost model for `prune` without an example input (see `default_mode`), calibrated on a 2-core AVX-512
# CPU: the stripe form pays a scatter-add per kept stripe and one GEMM of inner size C, so it wins only
# when it skips enough of the dense work and C is large enough for its GEMM to run near full speed.
STRIPE_MAX_DENSITY = 0.5
STRIPE_MIN_CHANNELS = 32


class _Group(NamedTuple):
    """Kept stripes at one kernel position: rows [start, end) of the weight, output shift (di, dj)."""
    start: int
    end: int
    di: int
    dj: int


class _Phase(NamedTuple):
    """Kernel positions reading input pixels (a + s·i, b + s·j): one GEMM over rows [start, end)."""
    a: int
    b: int
    start: int
    end: int
    groups: tuple
    fills: tuple  # (start, end, axis, shift): stripe-output rows/cols a flattened shift must not read


class StripeConv(nn.Module):
    """Conv over kept stripes only: y = act(b + r + Σ_{(n,p,q) kept} W[n, :, p, q] · x_{p,q} → channel n).

    x_{p,q} is the input window under kernel position (p, q), r an optional residual added before the
    optional ReLU `act` (both fused: no separate tensors, and in stripe mode applied while the output
    chunk is still in cache). The weight is stored as
    one row of C values per kept (filter, position) pair, rows grouped by position. `mode` picks the
    computation: "stripe" runs one GEMM of the kept stripes against the input and scatter-adds each
    stripe's output, shifted by its kernel offset, into its filter; "dense" scatters the stripes into
    a zero-filled N×C×K×K kernel and runs one dense conv (faster where few stripes were removed or C
    is tiny). Both give the same result up to float rounding.
    """

    def __init__(self, weight, keep, bias=None, stride=1, padding=1, relu=False, mode=None):
        super().__init__()
        out_ch, in_ch, k, _ = weight.shape
        self.in_channels, self.out_channels, self.kernel_size = in_ch, out_ch, k
        self.stride, self.padding, self.relu = stride, padding, relu
        filters, positions, phases = self._layout(keep.cpu(), k, stride, padding)
        self.weight = nn.Parameter(weight.detach()[filters, :, positions // k, positions % k].clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        self.register_buffer("filter_index", filters.to(weight.device))
        self.register_buffer("position_index", positions.to(weight.device))
        self._phases = phases
        self.mode = mode or default_mode(self)

    @staticmethod
    def _layout(keep, k, stride, padding):
        """Order kept stripes by input phase, then column shift, then row shift; describe the groups."""
        by_phase = {}
        for p in range(k):
            for q in range(k):
                a, di = (p - padding) % stride, (p - padding) // stride
                b, dj = (q - padding) % stride, (q - padding) // stride
                by_phase.setdefault((a, b), []).append((dj, di, p * k + q))
        filters, positions, phases, row = [], [], [], 0
        for (a, b), members in sorted(by_phase.items()):
            phase_start, groups = row, []
            for dj, di, pos in sorted(members):
                kept = keep.flatten(1)[:, pos].nonzero().flatten()
                if len(kept):
                    groups.append(_Group(row, row + len(kept), di, dj))
                    filters.append(kept)
                    positions.append(torch.full_like(kept, pos))
                    row += len(kept)
            if groups:
                phases.append(_Phase(a, b, phase_start, row, tuple(groups), _fill_runs(groups, phase_start)))
        if not filters:
            return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), ()
        return torch.cat(filters), torch.cat(positions), tuple(phases)

    @property
    def num_stripes(self):
        return self.weight.shape[0]

    @property
    def mode(self):
        return self._mode

    @mode.setter
    def mode(self, mode):
        if mode not in MODES:
            raise ValueError(f"StripeConv mode must be one of {MODES}, got {mode!r}")
        self._mode = mode

    def output_size(self, h, w):
        """Spatial output size: ⌊(H + 2P − K)/s⌋ + 1 per side."""
        k, s, p = self.kernel_size, self.stride, self.padding
        return (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1

    def stripe_form_fits(self, h, w):
        """Whether every input phase map has the output's size, so shifts are exact flat offsets."""
        ho, wo = self.output_size(h, w)
        s = self.stride
        return all(-(-(h - ph.a) // s) == ho and -(-(w - ph.b) // s) == wo for ph in self._phases)

    def forward(self, x, residual=None):
        if self._mode == "stripe" and self.stripe_form_fits(x.shape[-2], x.shape[-1]):
            return self._stripe_forward(x, residual)
        return self._dense_forward(x, residual)

    def dense_weight(self):
        """The N×C×K×K kernel with the stripes in place and zeros elsewhere, in channels_last memory."""
        k = self.kernel_size
        dense = self.weight.new_zeros(self.out_channels, k * k, self.in_channels)
        dense.index_put_((self.filter_index, self.position_index), self.weight)
        return dense.view(self.out_channels, k, k, self.in_channels).permute(0, 3, 1, 2)

    def _dense_forward(self, x, residual):
        # oneDNN's channels_last kernels beat its NCHW ones by up to 6× on CPU at these shapes.
        x = x.contiguous(memory_format=torch.channels_last)
        y = F.conv2d(x, self.dense_weight(), self.bias, self.stride, self.padding)
        if residual is not None:
            y.add_(residual)
        return y.relu_() if self.relu else y

    def _stripe_forward(self, x, residual):
        """Chunk by chunk of the batch; the result is a (B, N, Ho, Wo) view of channel-major memory."""
        batch = x.shape[0]
        ho, wo = self.output_size(x.shape[-2], x.shape[-1])
        plane = ho * wo
        x_cm = x.transpose(0, 1)
        r_cm = None if residual is None else residual.transpose(0, 1)
        chunks = self._chunks(batch, plane, x.shape[1], x.device)
        if len(chunks) == 1:
            out = self._stripe_chunk(x_cm, r_cm, ho, wo)
        else:
            out = x.new_empty(self.out_channels, batch * plane)
            for b0, b1 in chunks:
                r_part = None if r_cm is None else r_cm[:, b0:b1]
                out[:, b0 * plane:b1 * plane] = self._stripe_chunk(x_cm[:, b0:b1], r_part, ho, wo)
        return out.view(self.out_channels, batch, ho, wo).transpose(0, 1)

    def _chunks(self, batch, plane, chans, device):
        """Batch ranges for an eager CPU forward; one range on accelerators and when exporting."""
        if torch.compiler.is_exporting() or device.type != "cpu":
            return [(0, batch)]
        per_image = (chans + self.num_stripes + self.out_channels) * plane * self.weight.element_size()
        step = max(1, package.CHUNK_BYTES // max(per_image, 1))
        return [(b0, min(batch, b0 + step)) for b0 in range(0, batch, step)]

    def _stripe_chunk(self, x_cm, r_cm, ho, wo):
        """N×(B·Ho·Wo) output of a chunk from channel-major input x_cm (C, B, H, W), residual (N, B, Ho, Wo).

        The output lives in a buffer with `margin` spare elements on each side, so adding stripe
        outputs shifted by `off` flattened pixels is an index_add into a contiguous view starting
        `off` elements earlier: the fast row-wise path. Rows of that view overlap their neighbours by
        `off` elements; the stripe outputs there are the zeros that `_zero_wrapped` wrote.
        """
        chans, batch = x_cm.shape[:2]
        columns = batch * ho * wo
        size = self.out_channels * columns
        margin = max((abs(g.di) * wo + abs(g.dj) for ph in self._phases for g in ph.groups), default=0)
        buf = x_cm.new_empty(size + 2 * margin)
        self._init_output(buf, margin, columns, r_cm)
        s = self.stride
        for ph in self._phases:
            # A view, no copy, for stride 1 on channel-major input (a previous stripe layer's output).
            phase = x_cm[:, :, ph.a::s, ph.b::s].reshape(chans, columns)
            z = torch.mm(self.weight[ph.start:ph.end], phase)
            _zero_wrapped(z.view(ph.end - ph.start, batch, ho, wo), ph.fills)
            for g in ph.groups:
                begin = margin - (g.di * wo + g.dj)
                shifted = buf[begin:begin + size].view(self.out_channels, columns)
                rows = slice(g.start - ph.start, g.end - ph.start)
                shifted.index_add_(0, self.filter_index[g.start:g.end], z[rows])
        out = buf[margin:margin + size].view(self.out_channels, columns)
        return out.relu_() if self.relu else out

    def _init_output(self, buf, margin, columns, r_cm):
        """Output region of `buf` ← bias (+ residual), channel-major.

        Every view of `buf` is taken after the writes before it: autograd refuses an in-place op
        through a view made while its base was still a leaf.
        """
        region = slice(margin, margin + self.out_channels * columns)
        if r_cm is not None:
            buf[region].view(r_cm.shape).copy_(r_cm)
            if self.bias is not None:
                buf[region].view(self.out_channels, columns).add_(self.bias[:, None])
        elif self.bias is not None:
            buf[region].view(self.out_channels, columns).copy_(self.bias[:, None].expand(-1, columns))
        else:
            buf[region].zero_()

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, relu={self.relu}, "
                f"stripes={self.num_stripes}/{self.out_channels * self.kernel_size ** 2}, mode={self._mode}")


class ChannelMajorMaxPool(nn.Module):
    """Max-pool run on (C, B, H, W) memory: keeps a stripe layer's channel-major output copy-free."""

    def __init__(self, kernel_size, stride):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, x):
        return F.max_pool2d(x.transpose(0, 1), self.kernel_size, self.stride).transpose(0, 1)


def _fill_runs(groups, phase_start):
    """Merge consecutive groups with the same nonzero row (or column) shift into one zero-fill each."""
    runs = []
    for axis in ("h", "w"):
        for g in groups:
            shift = g.di if axis == "h" else g.dj
            if shift == 0:
                continue
            last = runs[-1] if runs else None
            if last and last[2] == axis and last[3] == shift and last[1] == g.start - phase_start:
                runs[-1] = (last[0], g.end - phase_start, axis, shift)
            else:
                runs.append((g.start - phase_start, g.end - phase_start, axis, shift))
    return tuple(runs)


def _zero_wrapped(z, fills):
    """Zero the rows/cols of stripe outputs that a flattened shift would wrap into a neighbour pixel.

    With shift d < 0 output row i reads row i + d, so rows [H + d, H) are never needed, and the
    flattened offset pulls exactly them in where i + d < 0 (from the previous row/image); d > 0 mirrors.
    """
    for start, end, axis, shift in fills:
        size = z.shape[2] if axis == "h" else z.shape[3]
        lo, hi = (max(0, size + shift), size) if shift < 0 else (0, min(size, shift))
        if axis == "h":
            z[start:end, :, lo:hi, :] = 0
        else:
            z[start:end, :, :, lo:hi] = 0


def default_mode(conv):
    """Cost model: stripe when at most STRIPE_MAX_DENSITY of the kernel is kept and C ≥ STRIPE_MIN_CHANNELS."""
    density = conv.num_stripes / max(1, conv.out_channels * conv.kernel_size ** 2)
    wide = conv.in_channels >= STRIPE_MIN_CHANNELS
    return "stripe" if density <= STRIPE_MAX_DENSITY and wide else "dense"


def stripe_convs(model):
    """(name, StripeConv) for every StripeConv in `model`."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, StripeConv)]


@contextlib.contextmanager
def forced_mode(model, mode):
    """Run every StripeConv of `model` in `mode` inside the block, restoring the chosen modes after."""
    convs = [m for _, m in stripe_convs(model)]
    saved = [m.mode for m in convs]
    try:
        for m in convs:
            m.mode = mode
        yield model
    finally:
        for m, chosen in zip(convs, saved):
            m.mode = chosen


@torch.inference_mode()
def choose_modes(pruned, example_input, repeats=5, clock=None):
    """Set each StripeConv to its faster mode for inputs shaped like `example_input`; return the summary.

    Layers are decided in forward order inside one forward pass, so each is timed on the memory
    layout its already-decided predecessors hand it. That greedy choice cannot see the layout it
    hands on, so the whole network is then timed with it, all-dense and all-stripe, and the fastest of
    the three is kept. Times are the best of `repeats` calls, the candidates interleaved so a load
    spike on a shared machine hits all alike. The choice holds for the device `example_input` is on (the
    network's): by default the clock is the wall clock, read after that device's queue is drained, since
    a GPU's kernels run asynchronously. `clock` may be time.process_time on a busy CPU machine with one
    thread (CPU time ignores time slicing).
    """
    clock = clock or device_clock(example_input.device)
    pruned.eval()
    convs = [m for _, m in stripe_convs(pruned)]

    def decide(conv, args, kwargs):
        choices = {mode: lambda mode=mode: setattr(conv, "mode", mode) for mode in MODES}
        set_fastest = _fastest(choices, lambda: conv.forward(*args, **kwargs), repeats, clock)
        set_fastest()

    hooks = [m.register_forward_pre_hook(decide, with_kwargs=True) for m in convs]
    try:
        pruned(example_input)
    finally:
        for h in hooks:
            h.remove()
    greedy = [m.mode for m in convs]
    choices = {"greedy": lambda: _set_modes(convs, greedy)}
    choices.update({mode: lambda mode=mode: _set_modes(convs, [mode] * len(convs)) for mode in MODES})
    set_fastest = _fastest(choices, lambda: pruned(example_input), repeats, clock)
    set_fastest()
    return stripe_summary(pruned)


def _fastest(choices, run, repeats, clock):
    """The setter in `choices` under which run() is fastest: best of `repeats` interleaved rounds."""
    best = dict.fromkeys(choices, math.inf)
    for round_ in range(repeats + 1):
        for name, apply in choices.items():
            apply()
            start = clock()
            run()
            if round_:  # round 0 warms up
                best[name] = min(best[name], clock() - start)
    return choices[min(best, key=best.get)]


def _set_modes(convs, modes):
    """Give the i-th conv the i-th mode."""
    for conv, mode in zip(convs, modes):
        conv.mode = mode


def stripe_summary(pruned):
    """Counts of StripeConv layers in stripe and dense mode, and one record per layer."""
    layers = [{"name": n, "mode": m.mode, "stripes": m.num_stripes,
               "kernel_stripes": m.out_channels * m.kernel_size ** 2,
               "in_channels": m.in_channels, "out_channels": m.out_channels}
              for n, m in stripe_convs(pruned)]
    counts = {mode: sum(layer["mode"] == mode for layer in layers) for mode in MODES}
    return {**counts, "layers": layers}
