"""The end-to-end stage: import → embed → kNN → map → DS2 → select → export of real pool
rows in one process, with the time and the peak resident memory of each step."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np

from common import (CACHE, RATING, e2e_embedding_cache, import_pool, now, proc_status,
                    reset_peak, sharegpt_subset, timed)


def stage_e2e(n: int, quick: bool) -> dict:
    """import → embed → kNN → map → DS2 → select → export of ``n`` real pool rows in this
    one process, with the time and the peak RSS of each step."""
    from core import atomic, export, select
    from core.embed import embedding_params, model_identity, run_embed
    from core.knn import run_neighbors
    from core.maps import run_map
    from core.scores.ds2 import run_curate
    from core.workspace import EMBEDDINGS, cache_key

    root = CACHE / f"ws-e2e-{n}"
    shutil.rmtree(root, ignore_errors=True)
    steps: list[dict] = []
    can_reset = reset_peak()

    def step(name, fn, note=""):
        reset_peak()
        value, seconds = timed(fn)
        steps.append({"step": name, "seconds": seconds, "peak_rss_mib": proc_status("VmHWM"),
                      "rss_after_mib": proc_status("VmRSS"), "note": note})
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
            params = embedding_params(None, "full", "fp32")
            atomic.write_npy(ws.path(EMBEDDINGS), np.load(cached))
            atomic.write_json(ws.path("embeddings.json"), {
                "step": EMBEDDINGS, "key": cache_key(params, {"samples":
                                                              ws.samples_fingerprint()}),
                "params": params, "model": params["model"], "dim": params["dim"],
                "recipe": "full", "note": "bench: reused from " + cached.name})
            result = run_embed(ws, precision="fp32")
            assert result.cached, "the injected embeddings were not accepted"

        embed_note = (f"reused bench/.cache/{cached.name} (computed {info['created']}, "
                      f"{info['seconds']:.0f} s = {info['seconds'] / n * 1e3:.0f} ms/row, "
                      f"peak RSS {info.get('peak_rss_mib', float('nan')):.0f} MiB then)")
        step("embed", inject, embed_note)
    else:
        # exact fp32, so the vectors cached below stay valid whatever this CPU's default
        step("embed", lambda: run_embed(ws, batch_size=64, precision="fp32"))
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

