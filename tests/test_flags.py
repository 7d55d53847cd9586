"""The flags every method script shares: -b, --momentum, --wd, -j and -p reach the optimizer and the loader
of a real run; --help shows each default once; the README's flag tables are what the parsers say now."""
import importlib.util
import math
import re
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from filtergraft.cli import shown_default
from helpers import REPO, run_script

# (script, its flags for one epoch on tiny data, training images, its session's log, last checkpoint)
RUNS = {
    "grafting_cifar/grafting.py": (["--dataset", "digits", "--model", "resnet20", "-b", 64], 1437,
                                   "1.log", "last_1.t7"),
    "grafting_plus/grafting+.py": (["--dataset", "digits", "--arch", "resnet20", "--num_classes", 10, "-b", 64],
                                   1437, "1.log", "last_1.t7"),
    # 40 images: a batch of 16 gives 3 batches where the default 256 (or 64) gives one.
    "grafting_imagenet/grafting.py": (["-a", "resnet18", "--crop-size", 64, "--resize-size", 72, "-b", 16], 40,
                                      "1.log", "last_1.t7"),
    "stripe_pruning/main.py": (["--dataset", "digits", "--arch", "VGG", "-b", 64], 1437, "train.log",
                               "last.pth.tar"),
}
# Not any script's default, so that a value reaching the optimizer can only have come from the flag.
MOMENTUM, WEIGHT_DECAY, PRINT_FREQ = 0.8, 3e-4, 2
# What --help says of the shared training flags, per script: its release's defaults.
DEFAULTS = {
    "grafting_cifar/grafting.py": {"batch-size": 128, "momentum": 0.9, "weight-decay": 0.0005, "workers": 2,
                                   "print-freq": 50},
    "grafting_plus/grafting+.py": {"batch-size": 128, "momentum": 0.9, "weight-decay": 0.0005, "workers": 2,
                                   "print-freq": 50},
    "grafting_imagenet/grafting.py": {"batch-size": 256, "momentum": 0.9, "weight-decay": 0.0001, "workers": 4,
                                      "print-freq": 10},
    "stripe_pruning/main.py": {"batch-size": 64, "momentum": 0.9, "weight-decay": 0.0001, "workers": 2,
                               "print-freq": 100},
}


def flag_tables():
    """scripts/flag_tables.py as a module (scripts/ is no package)."""
    spec = importlib.util.spec_from_file_location("flag_tables", REPO / "scripts" / "flag_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One epoch of every method script with the shared flags set away from their defaults; script: (result,
    session directory)."""
    root = tmp_path_factory.mktemp("flags")
    made = run_script("scripts/make_imagefolder.py", root / "folder", "--size", 32, "--per-class-train", 4,
                      "--per-class-val", 2)
    assert made.returncode == 0, made.stderr
    where = {"grafting_imagenet/grafting.py": ["--data", root / "folder"]}
    common = ["--momentum", MOMENTUM, "--wd", WEIGHT_DECAY, "-j", 0, "-p", PRINT_FREQ, "--epochs", 1]

    def run(script):
        session = root / script.split("/")[0]
        output = "--save" if script.startswith("stripe") else "--s"
        return run_script(script, *RUNS[script][0], *where.get(script, []), *common, output, session), session

    with ThreadPoolExecutor(max_workers=2) as pool:  # two cores: two processes at a time
        return dict(zip(RUNS, pool.map(run, RUNS)))


@pytest.mark.parametrize("script", RUNS)
def test_training_flags_reach_the_optimizer_and_the_loader(runs, script):
    result, session = runs[script]
    assert result.returncode == 0, result.stderr
    flags, images, log, last = RUNS[script]
    group = torch.load(session / last, map_location="cpu", weights_only=True)["optimizer"]["param_groups"][0]
    assert (group["momentum"], group["weight_decay"]) == (MOMENTUM, WEIGHT_DECAY), group
    batch_size = flags[flags.index("-b") + 1]
    steps = [(int(step), int(total)) for step, total in re.findall(r"epoch 1 \[(\d+)/(\d+)\]",
                                                                   (session / log).read_text())]
    batches = math.ceil(images / batch_size)
    assert steps == [(step, batches) for step in (*range(PRINT_FREQ, batches, PRINT_FREQ), batches)], steps
    if script.startswith("grafting_imagenet"):  # the one image-folder run: torchvision's loader, no workers
        assert "torch (0 workers) data pipeline" in (session / log).read_text()


@pytest.mark.parametrize("script", RUNS)
def test_help_shows_the_release_defaults(script):
    result = run_script(script, "--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    for flag, default in DEFAULTS[script].items():
        # the flag's own line of the options (usage's "[--flag VALUE]" is bracketed), up to its default
        assert re.search(rf"--{flag} \S+ [^()\[\]]*\(default: {re.escape(str(default))}\)", text), (flag, default)
    for unsaid in ("None", "False", "True", "[]"):
        assert f"(default: {unsaid})" not in text


def test_help_says_each_default_once():
    """Every flag with a value of its own shows it; a help that already tells its default is left as it is."""
    tables = flag_tables()
    for script in tables.SCRIPTS:
        parser = tables.build_parser(script)
        text = " ".join(parser.format_help().split())
        flags = [action for action in parser._actions if action.option_strings]
        shown = [action for action in flags if shown_default(action) is not None]
        for action in shown:
            assert f"(default: {action.default})" in text, (script, action.option_strings)
        told = [action for action in flags if "(default" in (action.help or "")]
        assert text.count("(default") == len(shown) + len(told), script


def test_readme_flag_tables_are_the_parsers():
    tables = flag_tables()
    readme = (REPO / "README.md").read_text()
    for script in tables.SCRIPTS:
        assert tables.table(script) in readme, f"{script}: run python scripts/flag_tables.py --write"
    assert tables.with_tables(readme, {script: tables.table(script) for script in tables.SCRIPTS}) == readme
