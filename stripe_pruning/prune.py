"""Prune a trained stripe checkpoint to what you need: at a threshold, at the smallest threshold that removes a
share of the FLOPs or parameters, or swept over its Filter Skeleton's thresholds.

    python stripe_pruning/prune.py runs/r56_sr/best.pth.tar --threshold 0.02 --save runs/r56_t02
    python stripe_pruning/prune.py runs/r56_sr/best.pth.tar --sweep --bn-recalibrate 20 --save runs/r56_sweep
    python stripe_pruning/prune.py runs/r56_sr/best.pth.tar --target-flops 0.5 --finetune-epochs 10 --save runs/r56_half
    python stripe_pruning/prune.py release_vgg.pth --arch VGG --train-threshold 0.01 --sweep --save runs/vgg_sweep

CHECKPOINT is this project's best.pth.tar (its architecture, class count and training threshold recorded) or a
state dict written by the release's code (give --arch). --threshold, --target-* write prune.json,
pruned.pth.tar (loadable with weights_only=True; filtergraft.stripe.checkpoints.load_pruned rebuilds the
network) and pruned.pt2 (torch.export) into --save, as main.py does after training; --sweep writes sweep.csv,
sweep.md and sweep.png. Reductions are fractions removed, counted as the release counts.
"""
from filtergraft import cli
from filtergraft.data import DATASETS, LOADERS
from filtergraft.errors import exit_on_user_error
from filtergraft.models import model_names
from filtergraft.stripe.job import run_prune
from filtergraft.stripe.sweep import LATENCY_BATCHES, MIN_RUN_TIME


def build_parser():
    parser = cli.script_parser(__doc__)
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="a trained stripe checkpoint or state dict")
    parser.add_argument("--arch", choices=model_names("stripe", aliases=True), default=None,
                        help="the architecture, where the checkpoint does not record it (a release state dict)")
    parser.add_argument("--num_classes", type=int, default=None,
                        help="classes, where the checkpoint does not record them (default then: 10)")
    parser.add_argument("--dataset", choices=(*DATASETS, "imagefolder"), default="cifar",
                        help="cifar, digits, fake, or imagefolder (--data_path holds train/ and val/)")
    parser.add_argument("--data_path", dest="data", default="../data", help="dataset root directory")
    parser.add_argument("--crop-size", type=cli.positive(int), default=224, help="imagefolder: training crop")
    parser.add_argument("--resize-size", type=cli.positive(int), default=256, help="imagefolder: eval resize")
    parser.add_argument("-b", "--batch-size", type=cli.positive(int), default=64, help="images per batch")
    parser.add_argument("-j", "--workers", type=cli.non_negative(int), default=2, help="data loading processes; 0: the main one")
    parser.add_argument("--loader", choices=LOADERS, default="auto",
                        help="data pipeline (main.py's --loader); auto: the whole dataset in memory when it fits")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N for evaluation and finetuning "
                                                       "(default: CUDA when available); latencies are on the CPU")
    parser.add_argument("--seed", type=cli.seed, default=1, help="random seed (data order, finetuning)")
    parser.add_argument("--save", default="checkpoint/pruned", help="output directory")

    how = parser.add_argument_group("what is pruned (one of them; none: the training threshold)")
    choice = how.add_mutually_exclusive_group()
    choice.add_argument("--threshold", type=cli.finite, default=None, help="prune the stripes with |FS| at or below it")
    choice.add_argument("--sweep", action="store_true",
                        help="measure at least 12 thresholds spread over the skeleton's |FS| distribution")
    choice.add_argument("--target-flops", type=cli.finite, default=None, metavar="R",
                        help="prune at the smallest threshold that removes the fraction R of the FLOPs")
    choice.add_argument("--target-params", type=cli.finite, default=None, metavar="R",
                        help="prune at the smallest threshold that removes the fraction R of the parameters")
    how.add_argument("--train-threshold", type=cli.finite, default=None,
                     help="the threshold the checkpoint was trained at, where it does not record it")

    tune = parser.add_argument_group("after pruning, before export")
    tune.add_argument("--bn-recalibrate", type=cli.positive(int), default=None, metavar="K",
                      help="re-estimate BatchNorm statistics on K training batches (weights untouched)")
    tune.add_argument("--finetune-epochs", type=cli.positive(int), default=None, metavar="E",
                      help="train the pruned network E epochs, its stripes held, then export")
    tune.add_argument("--finetune-lr", type=cli.positive(float), default=0.01, help="finetuning learning rate")
    tune.add_argument("--finetune-cos", action="store_true",
                      help="cosine finetuning rate, per iteration (default: ×0.1 at 50 %% and 75 %% of E)")
    tune.add_argument("--momentum", type=cli.non_negative(float), default=0.9, help="finetuning SGD momentum")
    tune.add_argument("--wd", "--weight-decay", dest="weight_decay", type=cli.non_negative(float), default=1e-4,
                      help="finetuning SGD weight decay")

    timing = parser.add_argument_group("sweep latency (CPU)")
    timing.add_argument("--latency-batches", type=cli.positive(int), nargs="+", default=list(LATENCY_BATCHES),
                        metavar="B", help="batch sizes the exported and the dense network are timed at")
    timing.add_argument("--latency-time", type=cli.positive(float), default=MIN_RUN_TIME, metavar="SECONDS",
                        help="seconds of timed calls per measurement (median reported)")
    return parser


def main(argv=None):
    return cli.run(build_parser(), run_prune, argv)


if __name__ == "__main__":
    with exit_on_user_error("prune.py"):
        main()
