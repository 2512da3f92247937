"""The component stages: IFD, embeddings, kNN, UMAP, DS2, selection + export.

Each runs in a child process for one size and returns a dict: "series" maps a name to
seconds (the quantities whose growth is fitted); everything else is stage-specific figures
for the report (bench/report.py).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from common import BENCH_RATING, CACHE, SIZES, base_vectors, pool_workspace, timed, vectors


def stage_ifd(n: int, quick: bool) -> dict:
    import ifd as bench_ifd
    from core.lm import DEFAULT_TOKEN_BUDGET

    main = n == max(SIZES["ifd"][0 if quick else 1])
    out = bench_ifd.compare(n, budgets=(DEFAULT_TOKEN_BUDGET,), loops=main, bf16=main,
                            repeats=1 if quick else 2)
    eng = next(v for v in out["variants"] if v["name"].startswith("engine fp32"))
    series = {"engine fp32": eng["seconds"]}
    if main:
        series["loop fp32"] = out["variants"][0]["seconds"]
    return {"series": series, "compare": out, "full_comparison": main}


def stage_embed(n: int, quick: bool) -> dict:
    import embed_knn_map as ekm

    r = ekm.compare_with_plain_encode(n, repeats=1 if quick else 2)
    return {"series": {"embed_texts": r["engine_s"], "plain encode": r["plain_s"]}, **r}


def stage_knn(n: int, quick: bool) -> dict:
    import embed_knn_map as ekm

    x, what = vectors(n)
    r = ekm.knn_compare(x)
    r.pop("graph")
    return {"series": {"hnsw": r["hnsw_s"], "exact": r["exact_s"]}, "vectors": what, **r}


def stage_umap(n: int, quick: bool) -> dict:
    import umap
    import warnings

    from core import knn, maps

    x, what = vectors(n)
    # numba compiles the kernels on first use in a process: warm both paths, time apart
    warm, _ = vectors(300)
    (widx, wsim), _ = timed(lambda: knn.knn_search(warm, k=10, method="exact"))
    _, compile_core = timed(lambda: maps.umap_layout(widx, wsim, seed=0, embeddings=warm))

    def own(data, approx=False):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return umap.UMAP(n_neighbors=11, n_components=2, metric="cosine", min_dist=0.1,
                             random_state=0, low_memory=True,
                             force_approximation_algorithm=approx).fit_transform(data)

    # both of umap-learn's kNN paths (exact below 4,096 rows, NN-descent above) compile apart
    _, compile_base = timed(lambda: (own(warm), own(warm, approx=True)))
    (idx, sim), knn_s = timed(lambda: knn.knn_search(x, k=10))  # auto: as `neighbors` does
    xy, core_s = timed(lambda: maps.umap_layout(idx, sim, seed=0, embeddings=x))
    xy2, base_s = timed(lambda: own(x))
    assert xy.shape == xy2.shape == (n, 2)
    print(f"umap N={n:,}: core (precomputed kNN) {core_s:.1f}s + faiss kNN {knn_s:.1f}s; "
          f"umap-learn own kNN {base_s:.1f}s; ratio {base_s / core_s:.2f}x", flush=True)
    return {"series": {"core umap (precomputed kNN)": core_s, "umap-learn (own kNN)": base_s},
            "vectors": what, "core_s": core_s, "knn_s": knn_s, "baseline_s": base_s,
            "knn_method": knn.resolve_method("auto", n),
            "compile_core_s": compile_core, "compile_baseline_s": compile_base,
            "baseline_exact_knn": n < 4096}


def stage_ds2(n: int, quick: bool) -> dict:
    import ds2 as bench_ds2

    base, what = base_vectors()
    true = bench_ds2.true_classes(base)
    xs, origin = bench_ds2.grow(base, n)
    label = "real" if n <= len(base) else "real + noisy copies"
    r = bench_ds2.run(xs, true[origin], label)
    b = bench_ds2.plain_loop_baseline(xs, true[origin])
    return {"series": {"curate": r["seconds"]}, "vectors": f"{label} (from {what})",
            **r, "baseline": b}


def stage_select(n: int, quick: bool) -> dict:
    import pandas as pd

    from core import export, select

    ws = pool_workspace(n)
    out_dir = Path(tempfile.mkdtemp(prefix="bench-select-", dir=CACHE))
    try:
        figures = {}
        repeats = 2 if quick else 3  # best of: these take (sub)seconds on a shared machine
        for policy, recipe in (
                ("ifd", select.make_recipe("ifd", ratio=0.1)),
                ("ds2", select.make_recipe("ds2", rating_column=BENCH_RATING, ratio=0.1,
                                           exclude_duplicates=True))):
            best = {"select_s": np.inf, "save_s": np.inf, "export_s": np.inf}
            for rep in range(repeats):
                sel, t_sel = timed(lambda: select.run_selection(ws, recipe,
                                                                name=f"bench-{policy}"))
                # untimed: save_selection refuses to replace a saved name without force
                ws.path("selections", f"bench-{policy}.json").unlink(missing_ok=True)
                _, t_save = timed(lambda: select.save_selection(ws, f"bench-{policy}", sel))
                out = out_dir / f"{policy}-{rep}.jsonl"
                _, t_exp = timed(lambda: export.export_selection(ws, f"bench-{policy}", out))
                for key, t in (("select_s", t_sel), ("save_s", t_save), ("export_s", t_exp)):
                    best[key] = min(best[key], t)
            figures[policy] = {**best, "rows": len(sel.sample_ids), "ids": sel.sample_ids,
                               "repeats": repeats}
        t_all = min(timed(lambda: export.export_all(ws, out_dir / f"all-{rep}.jsonl"))[1]
                    for rep in range(repeats))

        def baseline_ifd():
            scores = pd.read_parquet(ws.path("scores", "ifd.parquet"))
            k = int(0.1 * len(ws))
            top = scores[scores["ifd"] < 1].sort_values(["ifd", "sample_id"],
                                                        ascending=[False, True]).head(k)
            rows = pd.read_parquet(ws.path("samples.parquet"),
                                   columns=["sample_id", "instruction", "input", "output"])
            rows = rows.set_index("sample_id").loc[np.sort(top["sample_id"].to_numpy())]
            rows.to_json(out_dir / "baseline.jsonl", orient="records", lines=True,
                         force_ascii=False)
            return top["sample_id"].tolist()

        def baseline_all():
            rows = pd.read_parquet(ws.path("samples.parquet"),
                                   columns=["instruction", "input", "output"])
            rows.to_json(out_dir / "baseline-all.jsonl", orient="records", lines=True,
                         force_ascii=False)

        base_ids, t_base = timed(baseline_ifd)
        t_base = min([t_base] + [timed(baseline_ifd)[1] for _ in range(repeats - 1)])
        t_base_all = min(timed(baseline_all)[1] for _ in range(repeats))
        same = sorted(base_ids) == sorted(figures["ifd"]["ids"])
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
        for policy in ("ifd", "ds2"):
            ws.path("selections", f"bench-{policy}.json").unlink(missing_ok=True)
    for f in figures.values():
        f.pop("ids")
    core_ifd = sum(figures["ifd"][k] for k in ("select_s", "save_s", "export_s"))
    print(f"select+export N={n:,}: core IFD top-10% {core_ifd:.2f}s vs pandas baseline "
          f"{t_base:.2f}s (same rows: {same}); export all {t_all:.2f}s vs to_json "
          f"{t_base_all:.2f}s", flush=True)
    return {"series": {"core ifd select+save+export": core_ifd,
                       "core ds2 select+save+export": sum(
                           figures["ds2"][k] for k in ("select_s", "save_s", "export_s")),
                       "core export all": t_all, "baseline ifd (pandas)": t_base},
            "policies": figures, "export_all_s": t_all, "baseline_s": t_base,
            "baseline_all_s": t_base_all, "same_rows": same, "rows": n}

