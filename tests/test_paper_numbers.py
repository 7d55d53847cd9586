"""The README's tables of the papers' numbers against filtergraft.results.paper, the data the summaries
match runs to: every table, every row, every number, both ways (a row in one and not the other fails)."""
import re

import pytest

from filtergraft.results import paper
from helpers import REPO

SECTION = "### The paper's numbers and this repository's"
BY_NAME = {name: key for key, name in paper.NAMES.items()}


def readme_tables():
    """The Markdown tables of the README's section on the papers' numbers: a list of (header, rows), each
    row a list of cells, the separator line left out."""
    text = (REPO / "README.md").read_text()
    assert SECTION in text, "the README lost its section of the papers' numbers"
    section = text[text.index(SECTION):]
    following = re.search(r"^##? ", section[len(SECTION):], re.M)
    section = section[:len(SECTION) + following.start()] if following else section
    tables, current = [], None
    for line in section.splitlines():
        if not line.startswith("|"):
            current = None
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if current is None:
            current = (cells, [])
            tables.append(current)
        elif not set("".join(cells)) <= set("-: "):
            current[1].append(cells)
    return tables


def percent(cell):
    """'−92.66 %' → '−92.66'; an empty cell → None."""
    return cell.removesuffix("%").strip() or None


def cifar(rows):
    got = {(BY_NAME[model], int(data.removeprefix("CIFAR-"))): (base, slr, dlr)
           for model, data, base, slr, dlr, _ in rows}
    want = {(model, classes): values[column] for model, values in paper.CIFAR_TABLE.items()
            for column, classes in enumerate((10, 100))}
    return got, want


def networks(rows):
    got = {label: (c10, c100) for label, c10, c100, _ in rows}
    want = {str(num): values for num, values in paper.MOBILENET_NETWORKS.items()}
    want["6-model ensemble"] = paper.MOBILENET_ENSEMBLE
    return got, want


def vgg_levels(rows):
    return {label.removesuffix(" level"): (c10, c100) for label, c10, c100, _ in rows}, paper.VGG16_LEVELS


def scion_sources(rows):
    return {label: (c10, c100) for label, c10, c100, _ in rows}, paper.SCION_SOURCES


def imagenet(rows):
    got = {BY_NAME[model]: tuple(tuple(cell.split(" / ")) for cell in (baseline, grafting))
           for model, baseline, grafting, _ in rows}
    return got, paper.IMAGENET_TABLE


def grafting_plus(rows):
    got = {tuple(BY_NAME[name] for name in pair.split(" → ")): tuple(values) for pair, *values, _ in rows}
    return got, paper.GRAFTING_PLUS


def stripe(rows):
    got = {}
    for label, params, flops, accuracy, _ in rows:
        name, data, *alpha = label.split(", ")
        sr = float(alpha[0].removeprefix("α = ")) if alpha else None
        key = (BY_NAME[name], {"CIFAR-10": "cifar", "ImageNet": "imagenet"}[data],
               {"CIFAR-10": 10, "ImageNet": 1000}[data], sr)
        got[key] = (percent(params), percent(flops), accuracy)
    return got, paper.STRIPE_TABLE


# Each README table by its header, and how to read it into paper.py's layout.
TABLES = {
    ("model", "data", "baseline", "slr", "dlr", "this repository"): cifar,
    ("N", "CIFAR-10", "CIFAR-100", "this repository"): networks,
    ("method", "CIFAR-10", "CIFAR-100", "this repository"): vgg_levels,
    ("source", "CIFAR-10", "CIFAR-100", "this repository"): scion_sources,
    ("model", "baseline", "grafting", "this repository"): imagenet,
    ("teacher → student", "baseline", "grafting", "distillation", "grafting+", "this repository"): grafting_plus,
    ("model", "params", "FLOPs", "accuracy", "this repository"): stripe,
}


def test_every_table_of_the_section_is_one_of_the_papers():
    headers = [tuple(header) for header, _ in readme_tables()]
    assert sorted(headers) == sorted(TABLES)


@pytest.mark.parametrize("header", TABLES, ids=[read.__name__ for read in TABLES.values()])
def test_the_readme_table_holds_the_numbers_of_paper_py(header):
    (rows,) = [rows for head, rows in readme_tables() if tuple(head) == header]
    got, want = TABLES[header](rows)
    assert got == want


def test_the_summaries_show_these_numbers():
    """Every number of the tables reaches the rows that sessions are matched to (the ensemble aside: no
    session evaluates one)."""
    shown = {row.value for row in paper.PAPER_ROWS} | {row.top5 for row in paper.PAPER_ROWS}
    tables = [paper.CIFAR_TABLE, paper.MOBILENET_NETWORKS, paper.VGG16_LEVELS, paper.SCION_SOURCES,
              paper.IMAGENET_TABLE, paper.GRAFTING_PLUS]
    numbers = set(re.findall(r"\d+\.\d+", repr(tables)))
    assert numbers <= shown
    for key, reductions in paper.STRIPE_TABLE.items():
        assert paper.stripe_text(*reductions, imagenet=key[1] == "imagenet") in shown
    assert "−75.6 % params, −77.7 % FLOPs, accuracy −0.12" in shown  # SPEC §5: the authors' corrected columns
