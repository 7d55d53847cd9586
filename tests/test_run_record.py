"""The run record: one spelling per field from flags to session.json, earlier sessions' spellings read back,
and errors worded with the running script's own flag."""
import argparse
import json

import pytest

from filtergraft import cli
from filtergraft.errors import FlagError, UserError
from filtergraft.record import RunRecord
from filtergraft.session import CONFIG_FILE, Session, network_files, read_record

# What grafting_cifar/grafting.py wrote before the run record.
EARLIER = {"script": "grafting_cifar", "model": "resnet20", "num": 2, "num_classes": 10, "dataset": "digits",
           "level": "layer", "criterion": "entropy", "source": "external", "difflr": False, "cos": True,
           "details": {"epochs": 3, "lr": 0.1, "batch_size": 128, "a": 0.4, "c": 500.0}}


def cifar_parser():
    parser = argparse.ArgumentParser(prog="grafting.py")
    cli.add_cifar_training_flags(parser)
    parser.add_argument("--model", dest="arch", default="resnet32")
    parser.add_argument("--cifar", dest="num_classes", type=int, default=10)
    cli.add_grafting_flags(parser)
    cli.add_speed_flags(parser)
    return parser


def test_flags_fill_fields_of_one_spelling():
    args = cifar_parser().parse_args(["--model", "resnet20", "--cifar", "100", "--s", "x", "--i", "2", "--num", "2",
                                      "--print_frequence", "7", "--lr-step", "2", "--epochs", "5"])
    record = cli.grafting_record(args, "grafting_cifar")
    assert (record.arch, record.num_classes, record.session_dir, record.index, record.print_freq) == \
        ("resnet20", 100, "x", 2, 7)
    assert (record.momentum, record.weight_decay, record.milestones) == (0.9, 5e-4, [2, 4])
    assert RunRecord.from_dict(json.loads(record.to_json())) == record


def test_an_earlier_session_json_is_read_and_its_run_continued(tmp_path):
    (tmp_path / CONFIG_FILE).write_text(json.dumps(EARLIER))
    record = read_record(tmp_path)
    assert (record.arch, record.num_classes, record.epochs, record.a) == ("resnet20", 10, 3, 0.4)
    same = RunRecord(**{**record.identity(), "epochs": 6})
    Session(tmp_path, network_files(2), record=same).close()  # another network of that session
    with pytest.raises(UserError, match=r"holds another run: arch='resnet32' \(session has 'resnet20'\)"):
        Session(tmp_path, network_files(1), record=RunRecord(**{**record.identity(), "arch": "resnet32"}))
    assert json.loads((tmp_path / CONFIG_FILE).read_text()) == EARLIER


def test_errors_name_the_flag_of_the_script_that_was_run():
    def main(args):
        raise FlagError("num_classes", f"{{flag}} must be 10 or 100, not {args.num_classes}")

    with pytest.raises(UserError) as caught:
        cli.run(cifar_parser(), main, ["--cifar", "20"])
    assert str(caught.value) == "--cifar must be 10 or 100, not 20"
    parser = argparse.ArgumentParser()
    parser.add_argument("--num_classes", type=int)
    with pytest.raises(UserError, match="^--num_classes must be 10 or 100, not 20$"):
        cli.run(parser, main, ["--num_classes", "20"])


def test_a_resume_runs_this_runs_schedule_from_the_checkpoints_iteration(tmp_path):
    """A cosine over 2 epochs, resumed with --epochs 4 (and then as steps): the rate at the start of epoch 3
    is the new schedule's after 2 epochs' iterations, not the old schedule's end (0)."""
    import math

    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from filtergraft.engine import LRSchedule, Trainer, sgd
    from filtergraft.models import create_model

    gen = torch.Generator().manual_seed(0)
    loader = DataLoader(TensorDataset(torch.randn(8, 3, 32, 32, generator=gen), torch.randint(0, 10, (8,),
                                                                                                generator=gen)),
                        batch_size=4)

    def trainer(epochs, cosine, resume):
        model = create_model("resnet20", 10)
        session = Session(tmp_path, network_files(1), resume=resume)
        return Trainer(model, sgd(model, 0.1), loader, loader, session, device=torch.device("cpu"), epochs=epochs,
                       schedule=LRSchedule(epochs, len(loader), cosine=cosine))

    trainer(2, True, False).fit()
    for cosine, expected in ((True, 0.1 * 0.5 * (1 + math.cos(math.pi * 2 / 4))), (False, 0.1)):
        resumed = trainer(4, cosine, True)
        resumed.resume()
        assert resumed.start_epoch == 3 and resumed.lr == pytest.approx(expected)
