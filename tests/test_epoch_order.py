"""The order within an epoch, as the releases (SPEC §3): train, evaluate (the reported accuracy; the best
checkpoint is this network), publish the pre-graft weights, graft, save the last checkpoint. Checked by
recomputing each accuracy from the session's own files."""
import pytest
import torch

from filtergraft.data import cifar_like_datasets, make_loaders
from filtergraft.engine import evaluate
from filtergraft.models import create_model
from filtergraft.session import read_jsonl
from helpers import run_ring

SCRIPT = "grafting_cifar/grafting.py"
EPOCHS = 2
FLAGS = ["--dataset", "digits", "--model", "resnet20", "--workers", "0", "--batch-size", "256", "--num", "2",
         "--epochs", EPOCHS, "--seed", "0", "--eval-grafted", "--graft-timeout", "240"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("order")
    session = root / "pair"
    run_ring(SCRIPT, 2, *FLAGS, "--s", session, log_dir=root)
    return session


@pytest.fixture(scope="module")
def accuracy():
    """Test accuracy (%) of resnet20 weights on digits, through the loader the script used."""
    train_set, test_set = cifar_like_datasets("digits", "", 10)
    _, loader, _ = make_loaders(train_set, test_set, 256, 0, loader="tensor")
    model = create_model("resnet20", 10)
    threads = torch.get_num_threads()

    def measure(state):
        model.load_state_dict(state)
        torch.set_num_threads(1)  # as the script ran (script_env), so the arithmetic is the same
        try:
            return evaluate(model, loader, torch.device("cpu"))["test_acc"]
        finally:
            torch.set_num_threads(threads)
    return measure


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_reported_accuracy_is_the_pre_graft_networks(pair, accuracy):
    for i in (1, 2):
        final = read_jsonl(pair / f"metrics_{i}.jsonl")[-1]
        published = load(pair / "exchange" / f"net{i}_epoch{EPOCHS}.t7")["net"]
        assert final["epoch"] == EPOCHS and final["test_acc"] == accuracy(published)


def test_eval_grafted_reports_the_network_training_continues_from(pair, accuracy):
    for i in (1, 2):
        final = read_jsonl(pair / f"metrics_{i}.jsonl")[-1]
        assert final["test_acc_grafted"] == accuracy(load(pair / f"last_{i}.t7")["net"])
    assert "grafted" in (pair / "1.log").read_text()


def test_the_two_networks_report_their_own_accuracies(pair):
    first, second = (read_jsonl(pair / f"metrics_{i}.jsonl") for i in (1, 2))
    assert [m["test_acc"] for m in first] != [m["test_acc"] for m in second]


def test_best_checkpoint_holds_pre_graft_weights(pair, accuracy):
    for i in (1, 2):
        metrics = read_jsonl(pair / f"metrics_{i}.jsonl")
        best = load(pair / f"best_{i}.t7")
        assert best["acc"] == metrics[best["epoch"] - 1]["test_acc"] == accuracy(best["net"])
        if best["epoch"] == EPOCHS:
            published = load(pair / "exchange" / f"net{i}_epoch{EPOCHS}.t7")["net"]
            assert all(torch.equal(best["net"][k], published[k]) for k in published)
