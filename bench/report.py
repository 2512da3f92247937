"""RESULTS.md: number formatting, growth fits, the plans for quadratic stages, and one
render function per stage (registered in run_all.RENDER)."""

from __future__ import annotations

import numpy as np

from common import MEMORY_TARGET_GIB, POOL_ROWS, RESULTS_MD, STAGES, cpu_label


def fmt(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    if isinstance(value, (int, np.integer)) or (isinstance(value, float) and value >= 1000):
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def ratio(a, b) -> str:
    return "–" if not a or not b else f"{a / b:.2f}×"


def slope(sizes, values) -> float | None:
    pts = [(n, v) for n, v in zip(sizes, values) if v and v > 0]
    if len(pts) < 2 or len({n for n, _ in pts}) < 2:
        return None
    x = np.log([n for n, _ in pts])
    y = np.log([v for _, v in pts])
    return float(np.polyfit(x, y, 1)[0])


def growth_label(b: float | None) -> str:
    if b is None:
        return "–"
    if b < 0.85:
        return "sub-linear (fixed costs dominate)"
    if b < 1.15:
        return "linear"
    if b < 1.5:
        return "n log n"
    if b < 2.4:
        return "quadratic"
    return "worse than quadratic"


PLANS = {
    ("knn", "exact"): "Exact search does N² dot products. Already handled: `neighbors --method "
                      "auto` switches to HNSW (measured here: ~n log n, recall@10 in the "
                      "table) above 50,000 rows; the threshold can move down if the HNSW "
                      "column wins earlier on the quiet machine.",
    ("ifd", "loop fp32"): "The per-sample reference loop is only the baseline.",
    ("ifd", "engine fp32"): "Expected linear (length-sorted batches under a token budget, "
                            "cost per token). The two sizes score different rows (the first "
                            "15 vs the first 30) and, in a quick run, under different "
                            "contention; if the full run (100 vs 200 rows) still shows "
                            "b ≥ 1.5, profile `core.lm.sequence_losses` batching.",
    ("umap", "umap-learn (own kNN)"): "This is the baseline: below 4,096 rows umap-learn "
                                      "computes all pairwise distances. Cherrypick never "
                                      "runs it: `core.maps` passes the faiss graph "
                                      "(`precomputed_knn`).",
}


def kept_from(previous: str, missing: list[str], render: dict) -> dict:
    """What the RESULTS.md on disk says about the stages in ``missing`` (not in
    results.json, which lives in bench/.cache and so is not in a fresh checkout): per stage,
    its row of the stage table, its section and its rows of the growth table. A partial rerun
    (``--stages app``) then rewrites only what it measured."""
    parts = {"## " + p.split("\n", 1)[0]: "## " + p for p in previous.split("\n## ")[1:]}
    summary = next((v for k, v in parts.items() if k.startswith("## Machine")), "").split("\n")
    growth = parts.get("## Growth", "").split("\n")
    kept: dict = {}
    for stage in missing:
        section = parts.get(render[stage]([])[0])
        kept[stage] = {
            "rows": [line for line in summary if line.startswith(f"| {stage} | ")],
            "section": section.rstrip("\n").split("\n") if section else [],
            "growth": [line for line in growth if line.startswith(f"| {stage} | ")]}
    return kept


def write_report(results: dict, render: dict) -> None:
    """Write RESULTS.md from ``results``; ``render`` maps a stage to its section renderer.
    Stages ``results`` does not hold keep what the previous RESULTS.md says about them."""
    m = results.get("machine") or {}
    stages = results.get("stages", {})
    previous = RESULTS_MD.read_text() if RESULTS_MD.exists() else ""
    kept = kept_from(previous, [s for s in STAGES if s not in stages], render)
    modes = {e.get("mode") for e in stages.values()}
    L: list[str] = ["# Benchmark results", ""]
    L.append("Written by `bench/run_all.py` from `bench/.cache/results.json` (a stage it "
             "does not hold keeps its figures from the previous RESULTS.md); rerun "
             "`.venv/bin/python bench/run_all.py` (or `--stages ...`) to refresh. Every "
             "figure was measured; ratios compare two things timed in the same child process. "
             "See bench/README.md for what each stage measures.")
    L.append("")
    if "quick" in modes:
        L.append("> **QUICK RUN** (`--quick`: small sizes) for at least one stage, possibly on a "
                 "loaded machine (see the load column). Absolute times are pessimistic; read "
                 "the ratios. The full run replaces these figures.")
        L.append("")
    v = m.get("versions", {})
    L += ["## Machine (of the last run; each stage's CPU is in its row)", "",
          f"- CPU: {cpu_label(m)}, {m.get('cores')} logical cores "
          f"({m.get('usable_cores')} usable)",
          f"- RAM: {fmt(m.get('ram_gib'), 1)} GiB",
          f"- Python {m.get('python')}, torch {v.get('torch')}, faiss-cpu {v.get('faiss-cpu')}, "
          f"numpy {v.get('numpy')}, sentence-transformers {v.get('sentence-transformers')}, "
          f"umap-learn {v.get('umap-learn')}, scikit-learn {v.get('scikit-learn')}, "
          f"pandas {v.get('pandas')}, streamlit {v.get('streamlit')}, "
          f"playwright {v.get('playwright')}, {m.get('chromium')}",
          f"- {m.get('platform')}", ""]
    L += ["| stage | CPU | mode | date | wall | load avg (1 min) before → after, per size "
          "| note |", "|---|---|---|---|---|---|---|"]
    for s in STAGES:
        if s in stages:
            e = stages[s]
            loads = ", ".join(f"{r.get('load_before', 0):.1f}→{r.get('load_after', 0):.1f}"
                              for r in e["runs"])
            L.append(f"| {s} | {e.get('cpu', '–')} | {e['mode']} | {e['date']} | "
                     f"{fmt(e.get('wall_s'), 0)} s | {loads} | {e.get('note', '')} |")
        else:  # a row of an older RESULTS.md, before the CPU column: its CPU is not known
            L += [r if r.count("|") >= 8 else r.replace(f"| {s} | ", f"| {s} | – | ", 1)
                  for r in kept[s]["rows"]]
    L.append("")
    for s in STAGES:
        if s not in stages:
            if kept[s]["section"]:
                L += kept[s]["section"] + [""]
            continue
        runs = stages[s]["runs"]
        errors = [r for r in runs if "error" in r]
        L += render[s]([r for r in runs if "error" not in r])
        for r in errors:
            L.append(f"- N={r['size']:,}: **failed**: {r['error']}")
        L.append("")
    L += growth_section(stages, {s: k["growth"] for s, k in kept.items()})
    RESULTS_MD.write_text("\n".join(L) + "\n")


def render_e2e(runs) -> list[str]:
    L = ["## End to end: peak resident memory of one workspace", ""]
    for r in runs:
        n = r["rows"]
        L.append(f"{n:,} real rows (every file of shared/data + ShareGPT conversations, "
                 f"{'all 50k' if n >= POOL_ROWS else 'a seeded sample of the 50k pool'}), "
                 "one process: import → embed → kNN → map → DS2 (`claude_ge_4_5`, real, "
                 "missing outside alpaca_random_9k) → select (DS2 dual sort, 10 %) → export.")
        L.append("")
        L += ["| step | seconds | ms/row | peak RSS in step (MiB) | RSS after (MiB) | note |",
              "|---|---|---|---|---|---|"]
        for s in r["steps"]:
            L.append(f"| {s['step']} | {fmt(s['seconds'])} | {fmt(s['seconds'] / n * 1e3, 3)} "
                     f"| {fmt(s['peak_rss_mib'], 0)} | {fmt(s['rss_after_mib'], 0)} | "
                     f"{s['note']} |")
        peak = r["peak_rss_mib"] / 1024
        ok = "under" if peak < MEMORY_TARGET_GIB else "**over**"
        L += ["", f"**Peak RSS of the whole run: {peak:.2f} GiB** ({ok} the "
              f"{MEMORY_TARGET_GIB:.0f} GiB target; process rusage ru_maxrss). "
              f"Exported {r['exported_rows']:,} rows."]
        if r.get("embed_reused"):
            L.append("The embedding step reused vectors cached by an earlier run of this stage "
                     "(same samples, same model): its time and peak here are the injection "
                     "only; the note gives what the cached run measured.")
        if not r.get("per_step_peaks"):
            L.append("(/proc/self/clear_refs not writable: step peaks are cumulative.)")
    return L


def render_ifd(runs) -> list[str]:
    from ifd import render  # bench/ifd.py: the stage's figures and their table

    return render(runs)


def render_embed(runs) -> list[str]:
    from embed_knn_map import render  # bench/embed_knn_map.py

    return render(runs)


def section(title: str, intro: str | None, columns: list[str], rows: list[str]) -> list[str]:
    """A "## title" section: the intro paragraph (when given), then a table of ``rows``."""
    head = [f"## {title}", ""] + ([intro, ""] if intro else [])
    return head + ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)] + rows


def render_knn(runs) -> list[str]:
    def row(r):
        scaled = f" (scaled from {r['recall_queries']:,} queries)" if r["exact_scaled"] else ""
        return (f"| {r['rows']:,} | {r['vectors']} | {fmt(r['exact_s'])}{scaled} | "
                f"{fmt(r['hnsw_s'])} | {ratio(r['exact_s'], r['hnsw_s'])} | "
                f"{r['recall']:.4f} | {fmt(r['exact_s'] / r['rows'] * 1e3, 3)} | "
                f"{fmt(r['hnsw_s'] / r['rows'] * 1e3, 3)} |")

    return section("kNN: exact (IndexFlatIP) vs HNSW (as `core.knn` builds it), k = 10", None,
                   ["N", "vectors", "exact s", "HNSW s", "exact / HNSW", "recall@10",
                    "exact ms/row", "HNSW ms/row"], [row(r) for r in runs])


def render_umap(runs) -> list[str]:
    return section(
        "UMAP: on the precomputed faiss kNN (`core.maps`) vs umap-learn computing its own kNN",
        "Both seeded (single-threaded SGD), n_neighbors 11, cosine, same vectors; numba "
        "compilation timed apart on 300 rows. Below 4,096 rows umap-learn computes its kNN "
        "exactly, above with NN-descent.",
        ["N", "vectors", "core layout s", "+ faiss kNN s", "umap-learn s",
         "umap-learn / core layout", "umap-learn / (core + kNN)", "core ms/row",
         "compile core / umap-learn s"],
        [f"| {r['rows'] if 'rows' in r else r['size']:,} | {r['vectors']} | "
         f"{fmt(r['core_s'])} | {fmt(r['knn_s'])} ({r['knn_method']}) | "
         f"{fmt(r['baseline_s'])} | {ratio(r['baseline_s'], r['core_s'])} | "
         f"{ratio(r['baseline_s'], r['core_s'] + r['knn_s'])} | "
         f"{fmt(r['core_s'] / r['size'] * 1e3, 3)} | {fmt(r['compile_core_s'], 1)} / "
         f"{fmt(r['compile_baseline_s'], 1)} |" for r in runs])


def render_ds2(runs) -> list[str]:
    def row(r):
        b = r["baseline"]
        return (f"| {r['rows']:,} | {r['vectors']} | {fmt(r['seconds'])} | "
                f"{fmt(r['seconds'] / r['rows'] * 1e6, 1)} | "
                f"{ratio(b['hoc_loop_s'], b['hoc_engine_s'])} | "
                f"{ratio(b['epoch_loop_s'], b['epoch_engine_s'])} | "
                f"{r['t_err_max']:.3f} / {r['t_err_mean']:.3f} | {r['auroc']:.3f} | "
                f"{r['flagged']:.1%} | {', '.join(r['stages'])} |")

    return section(
        "DS2 curation (`core.scores.ds2.curate`, kNN excluded)",
        "Synthetic ratings drawn through a known 6×6 transition matrix from topic-cluster "
        "classes (bench/ds2.py). Baseline: the reference's per-sample Python loops (HOC "
        "counting over 50 subsamples, one SimiFeat epoch) on the same graph.",
        ["N", "vectors", "s", "µs/row", "HOC loop / engine", "SimiFeat epoch loop / engine",
         "T err max / mean", "AUROC", "flagged", "stages"], [row(r) for r in runs])


def render_select(runs) -> list[str]:
    rows = []
    for r in runs:
        for policy, f in r["policies"].items():
            total = f["select_s"] + f["save_s"] + f["export_s"]
            base = r["baseline_s"] if policy == "ifd" else None
            rows.append(f"| {r['rows']:,} | {policy} | {f['rows']:,} | {fmt(f['select_s'], 3)} | "
                        f"{fmt(f['save_s'], 3)} | {fmt(f['export_s'], 3)} | "
                        f"{fmt(total / r['rows'] * 1e6, 1)} | {fmt(base, 3) if base else '–'} | "
                        f"{ratio(total, base) if base else '–'} | "
                        f"{('yes' if r['same_rows'] else '**no**') if base else '–'} |")
        rows.append(f"| {r['rows']:,} | export all | {r['rows']:,} | – | – | "
                    f"{fmt(r['export_all_s'], 3)} | "
                    f"{fmt(r['export_all_s'] / r['rows'] * 1e6, 1)} | "
                    f"{fmt(r['baseline_all_s'], 3)} | "
                    f"{ratio(r['export_all_s'], r['baseline_all_s'])} | – |")
    return section(
        "Selection + export (`core.select` + `core.export`) vs a plain pandas baseline",
        "Real pool rows, synthetic score values (IFD- and DS2-shaped; cost does not depend on "
        "the values); best of 2 (quick) or 3 repeats. Core = `run_selection` + "
        "`save_selection` + `export_selection` (JSONL in the input schema + manifest with "
        "sha256). Baseline = `read_parquet`, filter IFD < 1, `sort_values`, `head`, "
        "`to_json(lines=True)` of instruction/input/output (no input schema, no manifest).",
        ["N", "policy", "kept", "select s", "save s", "export s", "core total ms per 1k rows",
         "baseline s", "core / baseline", "same rows"], rows)


def render_app(runs) -> list[str]:
    def lasso(r) -> str:
        if "lasso_median_s" not in r:
            return "–"
        picks = ", ".join(f"{s:.2f} s for {c:,}" for s, c in zip(r["lasso_s"], r["lasso_selected"]))
        return f"{fmt(r['lasso_median_s'])} ({picks})"

    def warm(r) -> str:
        paints = r.get("explore_warm_paints_s") or []
        return f" ({', '.join(fmt(x, 1) for x in paints)})" if len(paints) > 1 else ""

    return section(
        "App (headless chromium, `streamlit run app.py` via tests/test_browser.py's server)",
        "Explore first paint: `goto` until plotly has drawn every point (cold: first visit "
        "after the server started, the frame of scores built; warm: later visits once that "
        "run is over, each in a new browser context, so nothing is in the browser's cache; "
        "median of 3, the paints in brackets). Lasso: "
        "mouse up of a lasso on the map until the inspector lists the selected samples (the "
        "selection went to Python and back; median, then each lasso with its size). Slider to "
        "redraw: ArrowRight on \"Keep (% of all rows)\" until the Kept metric shows the new "
        "count and the app is idle (median). Targets at 200k points: warm paint ≤ 5 s, "
        "lasso ≤ 1 s, slider ≤ 1 s.",
        ["N", "workspace", "points drawn", "server start s", "Explore paint cold / warm s",
         "lasso → inspector s", "Select page s", "slider → redraw s (median)",
         "server peak RSS MiB"],
        [f"| {r['rows']:,} | {r['workspace']} | {r['explore_points']:,} | "
         f"{fmt(r['server_start_s'], 1)} | {fmt(r['explore_cold_s'], 1)} / "
         f"{fmt(r['explore_warm_s'], 1)}{warm(r)} | {lasso(r)} | {fmt(r['select_first_s'], 1)} | "
         f"{fmt(r['slider_redraw_median_s'])} "
         f"({', '.join(fmt(x) for x in r['slider_redraw_s'])}) | "
         f"{fmt(r.get('server_peak_rss_mib'), 0)} |" for r in runs])


def growth_section(stages: dict, kept: dict | None = None) -> list[str]:
    """The growth table of ``stages``, with ``kept`` rows (stage → lines) for the others."""
    L = ["## Growth", "",
         "Per stage and series: time at each size, the peak RSS of the child process at that "
         "size, and the log-log slope b of time ∝ N^b (least squares over the sizes; with two "
         "or three points on a shared machine read ±0.2). Labels: b < 0.85 sub-linear (fixed "
         "costs dominate), < 1.15 linear, < 1.5 n log n, < 2.4 quadratic. Memory: the marginal "
         "cost per row between the smallest and largest size (the fixed part is the "
         "interpreter, torch, faiss and the model).", "",
         "| stage | series | sizes | seconds | b | growth | peak RSS MiB | marginal KiB/row |",
         "|---|---|---|---|---|---|---|---|"]
    flagged = []
    for s in STAGES:
        if s not in stages:
            L += (kept or {}).get(s, [])
            continue
        runs = [r for r in stages[s]["runs"] if "error" not in r]
        if len(runs) < 2:
            continue  # one size (e2e): its steps' growth is in the stages above
        names = list(dict.fromkeys(k for r in runs for k in r.get("series", {})))
        sizes_all = [r["size"] for r in runs]
        rss = [r["peak_rss_mib"] for r in runs]
        marginal = ((rss[-1] - rss[0]) * 1024 / (sizes_all[-1] - sizes_all[0])
                    if len(runs) > 1 and sizes_all[-1] != sizes_all[0] else None)
        for name in names:
            pts = [(r["size"], r["series"][name]) for r in runs if name in r.get("series", {})]
            b = slope([p[0] for p in pts], [p[1] for p in pts])
            label = growth_label(b)
            if b is not None and b >= 1.5:
                flagged.append((s, name, b))
            L.append(f"| {s} | {name} | {', '.join(f'{n:,}' for n, _ in pts)} | "
                     f"{', '.join(fmt(t) for _, t in pts)} | {fmt(b)} | {label} | "
                     f"{', '.join(fmt(x, 0) for x in rss)} | {fmt(marginal, 1)} |")
    L += ["", "### Quadratic stages and plans", ""]
    if not flagged:
        L.append("No series grew with b ≥ 1.5 in this run.")
    for s, name, b in flagged:
        plan = PLANS.get((s, name), "No plan recorded yet: profile this stage at the largest "
                                    "size and find the N² part (see the growth table).")
        L.append(f"- **{s} / {name}** (b = {b:.2f}): {plan}")
    return L

