"""`python -m core COMMAND ...`: the command-line face of the engine.

Each area module adds its subcommands through ``register_cli(subparsers)``; this file holds
the import and info commands and the one place where errors become a one-line message and a
non-zero exit code.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import warnings


from .args import non_negative_int, positive_int, seed
from .errors import Cancelled, InputError
from .text import terminal_safe

# Modules that add subcommands (each has register_cli), in help order.
AREA_MODULES = ("core.embed", "core.knn", "core.maps", "core.scores.ifd", "core.raters.run",
                "core.reflect.cli",
                "core.scores.ds2", "core.dedup", "core.decontam", "core.select.cli", "core.tags",
                "core.export",
                "core.demo", "core.lm.brief")


class OneLineParser(argparse.ArgumentParser):
    """A bad argument is bad input like any other: one ``error: ...`` line on stderr and
    exit status 2, not argparse's usage block (``--help`` still prints the usage). The
    subcommands' parsers are of this class too (argparse makes them with the parent's)."""

    def error(self, message: str):
        self.exit(2, f"error: {terminal_safe(message)} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m core",
        description="Cherrypick: score, explore, curate and export instruction-tuning data.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _register_import(sub)
    _register_info(sub)
    for name in AREA_MODULES:
        importlib.import_module(name).register_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return int(args.func(args) or 0)
    except InputError as err:
        print(f"error: {terminal_safe(err)}", file=sys.stderr)
        return 2
    except Cancelled:
        print("cancelled; finished chunks are kept, rerun to resume", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted; finished chunks are kept, rerun to resume", file=sys.stderr)
        return 130


_default_showwarning = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings meant for the person (a damaged cache file recomputed, a skipped audit-log
    line) print as one line; others keep Python's format, with the source location a
    developer needs. Either way the message is terminal-safe (it may quote data)."""
    from .audit import AuditLogWarning
    from .workspace import DamagedFileWarning

    text = terminal_safe(message)
    if issubclass(category, (DamagedFileWarning, AuditLogWarning)):
        print(f"warning: {text}", file=sys.stderr, flush=True)
    else:
        _default_showwarning(text, category, filename, lineno, file, line)


# ----------------------------------------------------------------------------------------
def _register_import(sub) -> None:
    p = sub.add_parser("import", help="import a dataset file (or several) into a workspace",
                       description="Import Alpaca JSON/JSONL, ShareGPT, OpenAI messages, CSV "
                                   "or Parquet (optionally .gz), an Arrow file, a Hugging Face "
                                   "save_to_disk folder or (--hf) a Hub dataset into a new "
                                   "workspace folder. "
                                   "Several files (or a folder) make one pool with a `source` "
                                   "column.")
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="dataset file(s), a folder, an Arrow file or a Hugging Face "
                        "save_to_disk folder")
    p.add_argument("--hf", metavar="NAME",
                   help="a Hugging Face Hub dataset instead of files (needs the network)")
    p.add_argument("--split", metavar="S",
                   help="split of a save_to_disk DatasetDict or of --hf (default: the only "
                        "one, or train)")
    p.add_argument("--revision", metavar="R", help="Hub revision (branch, tag or commit) of --hf")
    p.add_argument("--workspace", required=True, help="workspace folder to create")
    p.add_argument("--format", choices=["alpaca", "sharegpt", "messages", "csv", "parquet"],
                   help="force the format instead of detecting it")
    p.add_argument("--map", dest="mapping", metavar="T=COL,...",
                   help="column mapping, e.g. instruction=prompt,output=completion")
    p.add_argument("--skip-invalid", action="store_true",
                   help="import the valid rows and write a report of the skipped ones")
    p.add_argument("--sample", type=positive_int, metavar="N",
                   help="import a random subset of N rows")
    p.add_argument("--seed", type=seed, default=0, help="seed for --sample (default 0)")
    p.add_argument("--limit", type=positive_int, metavar="N", help="import the first N rows")
    p.add_argument("--encoding", default="utf-8", help="text encoding (default utf-8)")
    p.add_argument("--max-chars", type=non_negative_int, default=None,
                   help="longest allowed field in characters (default 1,000,000; 0 = no limit)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing workspace")
    p.set_defaults(func=_cmd_import)


def _cmd_import(args) -> int:
    from .io import DEFAULT_MAX_CHARS, import_to_workspace, parse_mapping

    if bool(args.paths) == bool(args.hf):
        raise InputError("give dataset file(s) or --hf NAME (one of the two)")
    hub = {"hf": args.hf, "revision": args.revision} if args.hf or args.revision else {}
    ws, result = import_to_workspace(
        args.paths, args.workspace, format=args.format, mapping=parse_mapping(args.mapping),
        split=args.split, **hub,
        skip_invalid=args.skip_invalid, sample=args.sample, seed=args.seed, limit=args.limit,
        encoding=args.encoding,
        max_chars=DEFAULT_MAX_CHARS if args.max_chars is None else args.max_chars,
        overwrite=args.overwrite)
    n = len(result.samples)
    dups = int(result.samples["duplicate_of"].notna().sum())
    print(terminal_safe(f"imported {n:,} samples ({result.format}) into {ws.root}"))
    if dups:
        print(f"  {dups:,} exact duplicates flagged in column duplicate_of (kept)")
    for note in result.notes:
        print(f"  note: {terminal_safe(note)}")
    if result.skipped:
        print(terminal_safe(f"  skipped {len(result.skipped):,} invalid rows; reasons in "
                            f"{ws.path('import_report.json')}"))
    return 0


def _register_info(sub) -> None:
    p = sub.add_parser("info", help="what a workspace holds: counts, steps, scores")
    p.add_argument("--workspace", required=True)
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=_cmd_info)


def _cmd_info(args) -> int:
    from .workspace import Workspace

    info = Workspace.open(args.workspace).info()
    if args.json:
        print(json.dumps(info, indent=2, default=str))  # JSON escapes every control
        return 0
    src = info["source"] or {}
    print(terminal_safe(f"workspace  {info['workspace']}"))
    print(terminal_safe(f"source     {src.get('path')} ({src.get('format')})"))
    counts = info["counts"]
    print(f"samples    {counts['samples']:,} ({counts.get('duplicates', 0):,} exact duplicates)")
    for step, meta in info["steps"].items():
        if meta is None:
            print(f"{step:<10} -")
        else:
            params = ", ".join(f"{k}={v}" for k, v in (meta["params"] or {}).items())
            print(terminal_safe(f"{step:<10} done {meta['created']} ({meta['duration_s']} s) "
                                f"{params}"))
    if not info["scores"]:
        print("scores     none")
    for name, meta in info["scores"].items():
        params = ", ".join(f"{k}={v}" for k, v in (meta["params"] or {}).items())
        print(terminal_safe(f"score      {name}: {meta.get('rows')} rows; {params}"))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
