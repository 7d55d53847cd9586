"""The README's flag tables, made from the method scripts' own parsers so that they cannot drift from --help.

    python scripts/flag_tables.py            # print every script's table
    python scripts/flag_tables.py --write    # rewrite them in README.md, each between its two marker comments
    python scripts/flag_tables.py --check    # exit 1 when README.md's tables are not what the parsers give

Each table has one row per flag, in --help's order: its spellings (and choices), its default, its help.
"""
import argparse
import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SCRIPTS = ("grafting_cifar/grafting.py", "grafting_imagenet/grafting.py", "grafting_plus/grafting+.py",
           "stripe_pruning/main.py", "stripe_pruning/prune.py")
BEGIN = "<!-- flag table of {script}: made by scripts/flag_tables.py --write, do not edit by hand -->"
END = "<!-- end of the flag table of {script} -->"


def build_parser(script):
    """The parser of `script` (a path relative to the repository), from the script's own build_parser().
    The scripts are files, not modules (grafting+.py is no module name), so each is loaded from its path."""
    spec = importlib.util.spec_from_file_location(f"flag_table_{Path(script).parent.name}", REPO / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_parser()


def cell(text):
    """`text` as one Markdown table cell: on one line, its pipes escaped, and its angle brackets too (GitHub
    would read `<s>` and `<i>` of `<s>/exchange` and `last_<i>.t7` as HTML)."""
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text.replace("<", "&lt;").replace(">", "&gt;")


def default_cell(action):
    """A flag's default as the table shows it: `off` for a switch, `on` for one that only restates its default
    (ImageNet's --cos), a dash where there is no value of its own (the help says what happens then), else the
    value --help shows."""
    if action.nargs == 0:
        return "on" if action.default == action.const else "off"
    if action.default in (None, [], argparse.SUPPRESS):
        return "—"
    return f"`{action.default}`"


def help_cell(parser, action):
    """A flag's help as --help prints it, without the default that the table has a column for."""
    return cell((action.help or "") % {**vars(action), "prog": parser.prog})


def rows(parser):
    """The table rows of every flag of `parser` but -h, in --help's order (group by group)."""
    # argparse has no public view of its groups; --help walks these same lists.
    for group in parser._action_groups:
        for action in group._group_actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            spellings = ", ".join(f"`{option}`" for option in action.option_strings)
            if action.choices is not None:
                spellings += f" `{{{','.join(map(str, action.choices))}}}`"
            yield f"| {spellings} | {default_cell(action)} | {help_cell(parser, action)} |"


def table(script):
    """The whole marked block of `script`'s flag table, marker comments included."""
    lines = [BEGIN.format(script=script), "<details><summary>Every flag of <code>" + script + "</code></summary>",
             "", "| flag | default | help |", "|---|---|---|", *rows(build_parser(script)), "", "</details>",
             END.format(script=script)]
    return "\n".join(lines)


def marked_block(text, script):
    """(start, end) of `script`'s marked block in `text`, markers included; a missing marker is an error."""
    begin, end = BEGIN.format(script=script), END.format(script=script)
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise SystemExit(f"README.md needs one '{begin}' line followed by one '{end}' line")
    return text.index(begin), text.index(end) + len(end)


def with_tables(text, tables):
    """`text` with each script's marked block replaced by its table in `tables`."""
    for script, block in tables.items():
        start, stop = marked_block(text, script)
        text = text[:start] + block + text[stop:]
    return text


def main(argv=None):
    """Print the tables, or write them into README.md, or check README.md's; the exit status."""
    parser = argparse.ArgumentParser(description="The README's flag tables from the method scripts' parsers")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", action="store_true", help="rewrite the tables in README.md")
    action.add_argument("--check", action="store_true", help="exit 1 when README.md's tables are out of date")
    args = parser.parse_args(argv)
    tables = {script: table(script) for script in SCRIPTS}
    if not (args.write or args.check):
        print("\n\n".join(tables.values()))
        return 0
    text = README.read_text()
    updated = with_tables(text, tables)
    if args.write:
        README.write_text(updated)
        return 0
    for script in SCRIPTS:
        if tables[script] not in text:
            print(f"README.md: the flag table of {script} is out of date; run python scripts/flag_tables.py --write",
                  file=sys.stderr)
    return int(updated != text)


if __name__ == "__main__":
    sys.exit(main())
