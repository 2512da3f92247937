"""A fixed small workspace whose every result is kept in tests/data/golden, so a refactor
(or any change meant to keep behaviour) can be checked file by file: ``test_golden.py``
recomputes each step with the current code from the golden inputs of that step and compares.

Each step is recomputed from the *stored* inputs of that step (the k-NN graph from the golden
embeddings, the map from the golden graph, DS2 from the golden graph, selections from the
golden scores), so a tiny floating-point difference in one step (another CPU's fp32 kernels)
cannot grow through the later ones.

Regenerate the snapshot only when a change of numbers is intended, and say so in the commit:

    .venv/bin/python tests/golden.py
"""

from __future__ import annotations

import gzip
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "data" / "golden"
SOURCE = GOLDEN / "source.jsonl"        # 40 real Alpaca rows with Claude's rating
REFERENCE = GOLDEN / "reference.jsonl"  # 8 real AlpaGasus rows as RECOST's trusted set
RATING = "claude_ge_4_5"
ROWS = 40

# Workspace files the snapshot holds, per step (relative paths); sidecars are not compared.
STEP_FILES = {
    "embed": ["embeddings.npy"],
    "neighbors": ["knn.npz"],
    "map": ["map.parquet", "clusters.json"],
    "ifd": ["scores/ifd.parquet", "scores/rifd.parquet"],
    "recost": ["scores/recost.parquet"],
    "ds2": [f"scores/ds2_{RATING}.parquet"],
    "select": ["selections/ifd_top25.json", "selections/ifd_ppl_top10.json",
               "selections/reflection.json", "selections/ds2_10.json",
               "selections/recost_10.json", "selections/threshold.json"],
    "export": ["exports/ds2_10.jsonl"],
}
# Made by the import itself at test time (so the snapshot never pins the manifest format).
NOT_KEPT = {"manifest.json", "samples.parquet", "import_report.json"}
# Steps in order; each reads what the earlier ones wrote.
STEPS = list(STEP_FILES)

RECIPES = {
    "ifd_top25": dict(policy="ifd", ratio=0.25),
    "ifd_ppl_top10": dict(policy="ifd", column="ifd_ppl", budget=10, drop="gt1"),
    "reflection": dict(policy="reflection", budget=12),
    "ds2_10": dict(policy="ds2", rating_column=RATING, budget=10),
    "recost_10": dict(policy="recost", budget=10),
    "threshold": dict(policy="threshold", column="ifd", min={"ifd": 0.5},
                      exclude_duplicates=True),
}


def write_sources(data_dir: Path) -> None:
    """The golden source rows: the first 40 Alpaca rows and 8 AlpaGasus rows, verbatim."""
    GOLDEN.mkdir(parents=True, exist_ok=True)
    for src, dst, n in ((data_dir / "alpaca_random_9k.jsonl.gz", SOURCE, ROWS),
                        (data_dir / "alpagasus_claude_t45.jsonl.gz", REFERENCE, 8)):
        with gzip.open(src, "rt", encoding="utf-8") as fh:
            lines = [next(fh) for _ in range(n)]
        dst.write_text("".join(lines), encoding="utf-8")


def new_workspace(root: Path):
    from core.io import import_to_workspace

    ws, _ = import_to_workspace([SOURCE], root)
    return ws


def run_step(ws, step: str, lm=None) -> None:
    """Recompute one step of the golden workspace with the current code (forced)."""
    if step == "embed":
        from core.embed import run_embed

        run_embed(ws, force=True, **_exact_embedding())
    elif step == "neighbors":
        from core.knn import run_neighbors

        run_neighbors(ws, k=10, method="exact", force=True)
    elif step == "map":
        from core.maps import run_map

        run_map(ws, seed=0, force=True)
    elif step == "ifd":
        from core.scores.ifd import run_ifd

        run_ifd(ws, model=lm, dtype="float32", with_reverse=True, force=True)
    elif step == "recost":
        from core.scores.recost import run_recost

        run_recost(ws, str(REFERENCE), k=2, model=lm, dtype="float32", force=True,
                   **_exact_recost_embedding())
    elif step == "ds2":
        from core.scores.ds2 import run_curate

        run_curate(ws, rating_column=RATING, seed=0, force=True)
    elif step == "select":
        from core.select import make_recipe, run_selection, save_selection

        for name, spec in RECIPES.items():
            save_selection(ws, name, run_selection(ws, make_recipe(**spec), name=name),
                           **_overwrite_selection())
    elif step == "export":
        from core.export import export_selection

        export_selection(ws, "ds2_10", ws.path("exports", "ds2_10.jsonl"), force=True,
                         with_scores=["ifd", "rifd"])
    else:
        raise ValueError(step)


def _exact_embedding() -> dict:
    """fp32 embeddings where the engine has a precision choice (the snapshot is fp32)."""
    import inspect

    from core.embed import run_embed

    return {"precision": "fp32"} if "precision" in inspect.signature(run_embed).parameters \
        else {}


def _exact_recost_embedding() -> dict:
    import inspect

    from core.scores.recost import run_recost

    return ({"embed_precision": "fp32"}
            if "embed_precision" in inspect.signature(run_recost).parameters else {})


def _overwrite_selection() -> dict:
    import inspect

    from core.select import save_selection

    return {"force": True} if "force" in inspect.signature(save_selection).parameters else {}


def build(root: Path, lm=None) -> object:
    """A workspace with every golden step computed by the current code."""
    ws = new_workspace(root)
    for step in STEPS:
        run_step(ws, step, lm)
    return ws


def main() -> int:
    sys.path.insert(0, str(HERE.parent))
    import os
    import tempfile

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    data_dir = Path(os.environ.get("CHERRYPICK_DATA", HERE.parents[1] / "shared" / "data"))
    write_sources(data_dir)
    with tempfile.TemporaryDirectory() as tmp:
        ws = build(Path(tmp) / "golden")
        snapshot = GOLDEN / "workspace"
        shutil.rmtree(snapshot, ignore_errors=True)
        for path in sorted(ws.root.rglob("*")):
            rel = path.relative_to(ws.root)
            if path.is_file() and str(rel) not in NOT_KEPT:
                (snapshot / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, snapshot / rel)
    print(json.dumps({s: f for s, f in STEP_FILES.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
