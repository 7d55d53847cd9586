"""OUT/report.md from the parts' OUT/<part>.json: the machine, then each part's checks and figures."""
import json
import time
from pathlib import Path

import torch

from filtergraft.record import environment as run_environment
from filtergraft.timing import describe_device

ORDER = ("cpu", "agree", "scripts", "ring", "train32", "train32-deep", "train224", "exchange", "stripe")


def environment(device):
    """What the report says about the machine: the device line, the GPUs, versions, host and commit."""
    env = run_environment([torch.device(device)])
    env["device"] = describe_device(device)
    env["gpus"] = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return env


def markdown_table(columns, rows):
    """The lines of a Markdown table; a | inside a cell (|Δ|) is escaped so that it does not end the cell."""
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
    return [line(columns), "|" + "---|" * len(columns)] + [line(row) for row in rows]


def write(out):
    """Write OUT/report.md from the parts found in OUT; returns its path."""
    out = Path(out)
    parts = {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}
    names = sorted(parts, key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER))
    lines = ["# GPU check", "", f"Written {time.strftime('%Y-%m-%d %H:%M:%S %z')} from the parts in `{out}`.", ""]
    first = parts[names[0]]["environment"] if names else {}
    if first:
        lines += [f"- device: {first['device']}",
                  f"- GPUs: {first['gpus']}; Python {first['python']}, torchvision {first['torchvision']}; "
                  f"host {first['host']}; commit {first['commit']}"]
    failed = [(n, c) for n in names for c in parts[n]["checks"] if not c["ok"]]
    lines += ["", f"**{len(failed)} check(s) failed.**" if failed else "**Every check passed.**", ""]
    for name in names:
        part = parts[name]
        lines += [f"## {name} ({part['seconds'] / 60:.1f} min on {part['device']})", ""]
        if part["environment"] != first:  # a part run in another slice, on another machine or version
            lines += [f"On {part['environment']['device']}, host {part['environment']['host']}, commit "
                      f"{part['environment']['commit']}.", ""]
        if part["checks"]:
            lines += markdown_table(["", "check", "detail"], [["ok" if c["ok"] else "**FAIL**", c["name"], c["detail"]]
                                                              for c in part["checks"]]) + [""]
        for table in part["tables"]:
            lines += [f"**{table['title']}**", ""] + markdown_table(table["columns"], table["rows"]) + [""]
        lines += [f"- {note}" for note in part["notes"]] + ([""] if part["notes"] else [])
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
