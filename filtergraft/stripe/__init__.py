"""Stripe-wise pruning (SPEC §5): Filter Skeleton layers, skeleton update, pruning, stripe-wise inference.

A K×K filter of a `FilterStripe` conv is K·K stripes (1×1 filters over all input channels), each
scaled by one entry of the Filter Skeleton FS. Training drives FS entries to zero (`update_skeleton`);
`prune` then turns the masked network into one whose `StripeConv` layers store and compute only the
kept stripes, with the BatchNorm folded in.

Modules: `skeleton` (training-time layers and the skeleton update), `conv` (StripeConv and the
dense / stripe-wise choice), `pruning` (exact pruning, BatchNorm folding, export), `count` (parameters
and FLOPs, as the release counts and as the network runs); every public name of these is importable from
this package. Imported on their own: `report` (one pruning, measured, and its files), `checkpoints` (the
trained checkpoints brought for pruning, and pruned.pth.tar), `budget` (thresholds: the sweep's, the one
that meets a budget), `tuning` (BatchNorm recalibration, finetuning with the stripes held), `sweep` (the
threshold sweep and its files) and `job` (prune.py's run, from its flags).
"""
from .conv import (MODES, STRIPE_MAX_DENSITY, STRIPE_MIN_CHANNELS, ChannelMajorMaxPool, StripeConv,
                   choose_modes, default_mode, forced_mode, stripe_convs, stripe_summary)
from .count import count_flops, count_params, module_flops, program_flops, release_counts, stripe_flops
from .pruning import export_pruned, fold_batchnorm, prune, require_silent_removal
from .skeleton import (FilterStripe, stripe_batchnorm, stripe_classifier, stripe_pairs, threshold_skeleton,
                       update_skeleton, vital_convs)

# Eager stripe-mode forwards process the batch in chunks whose per-chunk working set (inputs, stripe
# outputs, outputs) stays about this size, so the stripe outputs are re-read from cache, not memory.
# StripeConv reads it here on every forward, so setting filtergraft.stripe.CHUNK_BYTES takes effect.
CHUNK_BYTES = 8 << 20

__all__ = ["CHUNK_BYTES", "MODES", "STRIPE_MAX_DENSITY", "STRIPE_MIN_CHANNELS", "ChannelMajorMaxPool",
           "FilterStripe", "StripeConv", "choose_modes", "count_flops", "count_params", "default_mode",
           "export_pruned", "fold_batchnorm", "forced_mode", "module_flops", "program_flops", "prune",
           "release_counts", "require_silent_removal", "stripe_batchnorm", "stripe_classifier", "stripe_convs",
           "stripe_flops", "stripe_pairs", "stripe_summary", "threshold_skeleton", "update_skeleton", "vital_convs"]
