"""Demo workspaces built from the real data in ``../shared/data``.

- ``alpaca``: 9,229 random Stanford Alpaca rows with Claude's real rating ``claude_ge_4_5``
  (the default; ready in a few minutes on 2 cores), opened with IFD, r-IFD and DS2 curation
  of that rating, so every page (the Audit queue too) has its data on first start;
- ``mixed``: every file of the data folder together (about 35,800 rows from five public
  instruction sets) with a ``source`` column: the kind of pool IFD and DS2 were made for.

Precomputed demo scores shipped in the repository (``demo/<name>/scores``) are copied into
a demo workspace when every input they were computed from is the workspace's own (samples;
for DS2 the kNN graph too), so its first map can be coloured by them at once. DS2 is then
"computed" by its step, a cache hit on the copy, or a few seconds' work on a machine whose
embeddings came out differently.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from .errors import InputError
from .progress import Progress, report
from .workspace import Workspace

REPO = Path(__file__).resolve().parents[1]
DEMOS = {
    "alpaca": {"files": ["alpaca_random_9k.jsonl.gz"], "folder": "demo-alpaca",
               "title": "Alpaca 9k (real Claude ratings)", "curate": "claude_ge_4_5"},
    "mixed": {"files": None, "folder": "demo-mixed",
              "title": "Mixed pool (five public instruction sets)"},
}
LICENCE = ("Alpaca-derived data is for non-commercial research (CC BY-NC 4.0); other sources "
           "carry their own licences (see shared/data/README.md).")


def data_dir() -> Path:
    """Where the real demo data lives: $CHERRYPICK_DATA, else ../shared/data next to the repo."""
    return Path(os.environ.get("CHERRYPICK_DATA", REPO.parent / "shared" / "data"))


def workspaces_dir() -> Path:
    """Where workspaces live by default: $CHERRYPICK_HOME, else ./workspaces in the repo."""
    return Path(os.environ.get("CHERRYPICK_HOME", REPO / "workspaces"))


def demo_available(name: str = "alpaca") -> bool:
    files = DEMOS[name]["files"]
    folder = data_dir()
    if files is None:
        return folder.is_dir() and any(folder.glob("*.jsonl.gz"))
    return all((folder / f).is_file() for f in files)


def demo_path(name: str = "alpaca") -> Path:
    return workspaces_dir() / DEMOS[name]["folder"]


def build_demo(name: str = "alpaca", progress: Progress | None = None,
               root: str | Path | None = None) -> Workspace:
    """Import, embed, link neighbours and map a demo dataset, then curate its rating column
    with DS2 (the alpaca demo); every step resumes if killed.

    ``progress(done, 100, note)`` receives the overall percentage and the inner step's
    progress in its note.
    """
    from .embed import run_embed
    from .knn import run_neighbors
    from .maps import run_map
    from .io import import_to_workspace

    if name not in DEMOS:
        raise InputError(f"unknown demo '{name}'; choose one of {', '.join(DEMOS)}")
    if not demo_available(name):
        raise InputError(f"the demo data is not there ({data_dir()}); set CHERRYPICK_DATA to "
                         "the folder holding the shared data files, or import your own file")
    root = Path(root) if root is not None else demo_path(name)
    spec = DEMOS[name]
    paths = [data_dir() / f for f in spec["files"]] if spec["files"] else [data_dir()]
    steps = ["import", "embed", "neighbours", "map"] + (["DS2"] if spec.get("curate") else [])

    def inner(step: int):
        def cb(done: int, total: int, note: str = "") -> None:
            frac = done / total if total else 1.0
            report(progress, round(100 * (step + frac) / len(steps)), 100,
                   f"{steps[step]} {done:,}/{total:,}" + (f" {note}" if note else ""))
        return cb

    report(progress, 0, 100, "import")
    if Path(root, "manifest.json").exists():
        ws = Workspace.open(root)
    else:
        ws, _ = import_to_workspace(paths, root)
        _copy_demo_scores(name, ws)
    run_embed(ws, progress=inner(1))
    run_neighbors(ws, progress=inner(2))
    _copy_demo_scores(name, ws)  # those that needed the kNN graph (DS2)
    run_map(ws, progress=inner(3))
    if spec.get("curate"):
        from .scores.ds2 import run_curate

        run_curate(ws, spec["curate"], progress=inner(4))
    report(progress, 100, 100, "ready")
    return ws


def shipped_scores_dir(name: str = "alpaca") -> Path:
    """Where the repository keeps a demo's precomputed score files."""
    return REPO / "demo" / DEMOS[name]["folder"] / "scores"


def _copy_demo_scores(name: str, ws: Workspace) -> None:
    """Copy precomputed score files shipped with the repo, when every input they were
    computed from is this workspace's (``_inputs_match``) and the workspace has no such score
    yet (a score computed here is never replaced).

    The sidecar keeps its cache key, so ``score ifd`` on this workspace treats the copied
    rows as done (and extends them) unless asked to recompute."""
    import pandas as pd

    from . import atomic

    shipped = shipped_scores_dir(name)
    if not shipped.is_dir():
        return
    for meta_path in sorted(shipped.glob("*.json")):
        meta = atomic.read_json(meta_path)
        data = meta_path.with_suffix(".parquet")
        if ws.score_meta(data.stem) is not None or not _inputs_match(ws, meta):
            continue  # already here, or computed from other inputs: not this workspace's
        if data.exists():
            ws.write_score(data.stem, pd.read_parquet(data), meta)


# Workspace files a shipped score may have been computed from (``inputs`` of its sidecar).
_INPUT_FILES = ("samples.parquet", "embeddings.npy", "knn.npz", "map.parquet")


def _inputs_match(ws: Workspace, meta: dict) -> bool:
    """Every input recorded at shipping (``precomputed.input_files``: file → fingerprint) is
    in this workspace with that fingerprint; a file shipped before inputs were recorded is
    checked on the samples alone (it read nothing else)."""
    files = (meta.get("precomputed") or {}).get("input_files")
    if files is None:
        return meta.get("inputs", {}).get("samples") == ws.samples_fingerprint()
    return all(ws.exists(name) and ws.fingerprint(name) == fingerprint
               for name, fingerprint in files.items())


def _input_files(ws: Workspace, meta: dict, score: str) -> dict:
    """The workspace file behind each recorded input fingerprint of a score to ship."""
    candidates = [*_INPUT_FILES, *(f"scores/{s}.parquet" for s in ws.score_names()
                                   if s != score)]
    found = {}
    for label, fingerprint in (meta.get("inputs") or {}).items():
        name = next((c for c in candidates if ws.exists(c) and ws.fingerprint(c) == fingerprint),
                    None)
        if name is None:
            raise InputError(f"score {score!r} read {label!r}, which is no file of {ws.root}: "
                             "only scores computed from workspace files can be shipped",
                             field="scores")
        found[name] = fingerprint
    return found


def score_command(step: str, params: dict, workspace: str = "WORKSPACE",
                  with_reverse: bool = False) -> str:
    """The CLI command that recomputes a score file with the parameters in its sidecar."""
    if step.startswith("scores/ds2_"):
        cmd = [f"python -m core curate --workspace {workspace} --rating-column "
               f"{params['rating_column']}"]
        if params.get("scale"):
            cmd.append(f"--scale {params['scale']}")
        if params.get("k", 10) != 10:
            cmd.append(f"--k {params['k']}")
        if params.get("seed", 0):
            cmd.append(f"--seed {params['seed']}")
        if params.get("self_vote"):
            cmd.append("--self-vote")
        if params.get("detector", "rank") != "rank":
            cmd.append(f"--detector {params['detector']}")
        if params.get("min_confidence", 0.5) != 0.5:
            cmd.append(f"--min-confidence {params['min_confidence']}")
        return " ".join(cmd)
    if step in ("scores/ifd.parquet", "scores/rifd.parquet"):
        cmd = [f"python -m core score ifd --workspace {workspace}"]
        if "template" in params:
            cmd.append(f"--template {params['template']}")
        cmd.append(f"--max-length {params.get('max_length', 512)}")
        cmd.append(f"--dtype {params.get('dtype', 'auto')}")
        if with_reverse or step == "scores/rifd.parquet":
            cmd.append("--with-reverse")
        return " ".join(cmd)
    raise ValueError(f"no command known for step {step!r}")


def ship_scores(ws: Workspace, name: str = "alpaca", scores: Sequence[str] = ("ifd", "rifd")
                ) -> list[Path]:
    """Copy finished score files of a demo workspace into the repository as demo data.

    Each shipped sidecar gets a ``precomputed`` entry (the command that recomputes it), which
    the app shows to say where the numbers came from. Maintainers run this once after a full
    scoring run (``python -m core demo alpaca --ship-scores ifd,rifd``)."""
    from . import atomic

    dest = shipped_scores_dir(name)
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for score in scores:
        meta = ws.score_meta(score)
        if meta is None:
            raise InputError(f"score {score!r} is not in {ws.root}", field="scores")
        if meta.get("rows") != len(ws):
            raise InputError(f"score {score!r} covers {meta.get('rows')} of {len(ws)} "
                             "samples: finish the run before shipping it", field="scores")
        meta = dict(meta)
        meta["precomputed"] = {
            "command": score_command(meta["step"], meta.get("params", {}),
                                     f"workspaces/{DEMOS[name]['folder']}",
                                     with_reverse="rifd" in scores),
            "shipped_as": f"demo/{DEMOS[name]['folder']}/scores/{score}.parquet",
            "input_files": _input_files(ws, meta, score),
        }
        meta.pop("model_path", None)  # a path on the maintainer's machine means nothing here
        meta.pop("file", None)  # the file as it is in this workspace, not as shipped
        atomic.write_parquet(dest / f"{score}.parquet", ws.read_score(score))
        atomic.write_json(dest / f"{score}.json", meta)
        written.append(dest / f"{score}.parquet")
    return written


def precomputed_note(meta: dict | None) -> str | None:
    """One sentence saying a score was shipped precomputed: by which command and model."""
    shipped = (meta or {}).get("precomputed")
    if not shipped:
        return None
    params = meta.get("params", {})
    if str(meta.get("step", "")).startswith("scores/ds2_"):
        return (f"Precomputed for this demo ({meta.get('rows', 0):,} rows, "
                f"{str(meta.get('created', ''))[:10]}) by: {shipped.get('command', '?')}")
    took = meta.get("duration_s")
    hours = f" in {took / 3600:.1f} h" if took else ""
    return (f"Precomputed for this demo ({meta.get('rows', 0):,} rows{hours}, "
            f"{str(meta.get('created', ''))[:10]}) with {params.get('model', 'the model')} "
            f"({params.get('dtype', '?')}, max_length {params.get('max_length', '?')}"
            + (f", template {params['template']}" if "template" in params else "")
            + f") by: {shipped.get('command', '?')}")


def register_cli(sub) -> None:
    p = sub.add_parser("demo", help="build a demo workspace from ../shared/data",
                       description="Build (or finish building) a demo workspace: import, "
                                   "embed, neighbours, map (and DS2 of the alpaca demo's "
                                   "rating). Resumes where it stopped.")
    p.add_argument("name", nargs="?", default="alpaca", choices=sorted(DEMOS))
    p.add_argument("--workspace", help="folder (default: workspaces/demo-<name>)")
    p.add_argument("--ship-scores", metavar="NAMES",
                   help="maintainers: copy these finished scores (e.g. ifd,rifd or "
                        "ds2_claude_ge_4_5) of the demo "
                        "workspace into demo/<name>/scores for new demo workspaces")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args) -> int:
    from .progress import TqdmProgress
    from .text import terminal_safe

    if args.ship_scores:
        ws = Workspace.open(args.workspace or demo_path(args.name))
        for path in ship_scores(ws, args.name, [s.strip() for s in args.ship_scores.split(",")]):
            print(terminal_safe(f"shipped {path.relative_to(REPO)} "
                                f"({path.stat().st_size / 1e6:.2f} MB)"))
        return 0
    with TqdmProgress(desc=f"demo {args.name}", unit="%") as bar:
        ws = build_demo(args.name, progress=bar, root=args.workspace)
    print(terminal_safe(f"demo workspace ready: {ws.root} ({len(ws):,} samples)"))
    return 0
