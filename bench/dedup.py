"""Near-duplicate and decontamination figures on the real mixed pool (issue 15, items 1-2).

    nice -n 10 .venv/bin/python bench/dedup.py [--sample 800] [--eval-items 300]

1. The mixed pool (the six files of shared/data, 35,822 rows, 937 exact duplicates) plus 200
   planted copies of real long rows (100 light edits, 100 paraphrases; the deterministic
   edits of tests/test_dedup.py) is imported into one workspace. Exact + MinHash run on all
   of it; recall = planted copies grouped with their original, exact recall = rows with
   ``duplicate_of`` flagged, precision (a lower bound) = flagged rows that are planted
   copies or exact duplicates, over all flagged rows (the rest are unlabelled real pairs).
2. The kNN-cosine detector needs embeddings, which cost 70-240 ms a row on this machine,
   so it runs on a sample: the 200 originals, their 200 copies and ``--sample`` other pool
   rows; MinHash is measured on the same sample for comparison.
3. Decontamination, GSM8K train as the eval set: 13- and 8-gram overlap over the whole pool
   (every GSM8K row must be found; non-GSM8K rows flagged are false positives), and the
   embedding check on the sample against ``--eval-items`` GSM8K items, 100 of which are in
   the sample (found?) and the rest not (GSM8K rows of the sample outside the eval subset
   measure same-domain false positives).
Results: bench/.cache/dedup_results.json and the table printed (copied into bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import time

import common  # noqa: F401 - paths, offline defaults
import numpy as np
import pandas as pd

from common import CACHE, DATA
from test_dedup import LONG_WORDS, edited_record, words

PLANTS = 200
GSM8K = "gsm8k_train_alpaca_format.jsonl.gz"


def pool_files() -> list:
    return sorted(DATA.glob("*.jsonl.gz"))


def plant(pool: pd.DataFrame, rng: np.random.Generator) -> tuple[list[dict], list[int], list]:
    """200 edited copies of distinct long pool rows without exact duplicates."""
    dup = pool["duplicate_of"].notna() | pool["sample_id"].isin(pool["duplicate_of"].dropna())
    long = pool[~dup & (pool.apply(lambda r: words(r) >= LONG_WORDS, axis=1))]
    picks = rng.choice(long["sample_id"].to_numpy(), PLANTS, replace=False)
    records, kinds = [], []
    for n, sid in enumerate(picks):
        row = pool.loc[pool["sample_id"] == sid].iloc[0]
        kind = "light" if n < PLANTS // 2 else "paraphrase"
        records.append(edited_record({"instruction": row["instruction"], "input":
                                      row["input"], "output": row["output"]}, kind, n))
        kinds.append(kind)
    return records, [int(s) for s in picks], kinds


def write_jsonl(path, records) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                    encoding="utf-8")


def detector_figures(frame: pd.DataFrame, copies: dict[int, int], kinds: dict[int, str],
                     exact_rows: set[int]) -> dict:
    group = frame.set_index("sample_id")["group"]
    found = {c: bool(pd.notna(group[c]) and group[c] == group[o]) for c, o in copies.items()}
    out = {k: f"{sum(found[c] for c in copies if kinds[c] == k)}/"
              f"{sum(1 for c in copies if kinds[c] == k)}" for k in ("light", "paraphrase")}
    out["recall_planted"] = round(float(np.mean(list(found.values()))), 3)
    flagged = set(frame.loc[frame["near_duplicate"], "sample_id"].astype(int))
    if exact_rows:
        out["exact_recall"] = f"{len(flagged & exact_rows)}/{len(exact_rows)}"
    known = flagged & (set(copies) | exact_rows)
    out["flagged"] = len(flagged)
    out["precision_lower_bound"] = round(len(known) / len(flagged), 3) if flagged else None
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sample", type=int, default=800)
    parser.add_argument("--eval-items", type=int, default=300)
    args = parser.parse_args()
    from core.decontam import run_decontaminate
    from core.dedup import run_dedup
    from core.embed import run_embed
    from core.io import import_to_workspace, read_datasets
    from core.knn import run_neighbors

    root = CACHE / "dedup"
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    pool = read_datasets(pool_files()).samples
    records, originals, kind_list = plant(pool, rng)
    planted_file = root / "planted_copies.jsonl"
    write_jsonl(planted_file, records)
    results: dict = {"pool_rows": len(pool), "exact_duplicates": int(pool["duplicate_of"]
                                                                     .notna().sum())}

    # 1. the whole pool: exact + MinHash, and the n-gram decontamination
    ws, _ = import_to_workspace([*pool_files(), planted_file], root / "ws-pool", overwrite=True)
    samples = ws.samples(["sample_id", "source", "duplicate_of"])
    first_copy = int(len(pool))
    copies = {first_copy + n: originals[n] for n in range(PLANTS)}
    kinds = {first_copy + n: kind_list[n] for n in range(PLANTS)}
    exact_rows = set(samples.loc[samples["duplicate_of"].notna(), "sample_id"].astype(int))
    start = time.perf_counter()
    lexical = run_dedup(ws, semantic=None, force=True).value
    results["minhash_pool"] = {**detector_figures(lexical, copies, kinds, exact_rows),
                               "seconds": round(time.perf_counter() - start, 1)}
    print("MinHash on the pool:", results["minhash_pool"], flush=True)
    is_gsm = samples["source"].eq(GSM8K).to_numpy()
    # a planted copy of a GSM8K row is contaminated too: it is counted apart
    gsm_copy = np.zeros(len(samples), dtype=bool)
    gsm_copy[[c for c, o in copies.items() if is_gsm[o]]] = True
    clean = ~is_gsm & ~gsm_copy
    for n in (13, 8):
        start = time.perf_counter()
        flags = run_decontaminate(ws, [DATA / GSM8K], ngram=n, cosine=None, force=True).value
        hit = flags["contaminated"].to_numpy()
        light_copy = gsm_copy & np.isin(np.arange(len(samples)),
                                        [c for c in copies if kinds[c] == "light"])
        results[f"decontam_{n}gram_pool"] = {
            "gsm8k_found": f"{int((hit & is_gsm).sum())}/{int(is_gsm.sum())}",
            "planted_gsm8k_copies_found": f"light {int((hit & light_copy).sum())}/"
                                          f"{int(light_copy.sum())}, paraphrased "
                                          f"{int((hit & gsm_copy & ~light_copy).sum())}/"
                                          f"{int((gsm_copy & ~light_copy).sum())}",
            "non_gsm8k_flagged": f"{int((hit & clean).sum())}/{int(clean.sum())}",
            "seconds": round(time.perf_counter() - start, 1)}
        print(f"{n}-gram decontamination:", results[f"decontam_{n}gram_pool"], flush=True)

    # 2. the embedded sample: semantic vs MinHash
    others = np.setdiff1d(pool["sample_id"].to_numpy(), originals)
    gsm_ids = pool.loc[pool["source"] == GSM8K, "sample_id"].to_numpy()
    gsm_rows = pool.loc[pool["source"] == GSM8K].sort_values("sample_id")
    eval_rows = gsm_rows.iloc[:args.eval_items]
    in_eval = eval_rows["sample_id"].to_numpy()[:100]      # 100 eval items put in the sample
    rest = rng.choice(np.setdiff1d(others, eval_rows["sample_id"]), args.sample, replace=False)
    chosen = list(originals) + [int(i) for i in in_eval] + [int(i) for i in np.sort(rest)]
    part = pool.set_index("sample_id").loc[chosen]
    sample_records = [json.loads(r) for r in part["record"]] + records
    sample_file = root / "sample.jsonl"
    write_jsonl(sample_file, sample_records)
    eval_file = root / "gsm8k_eval_subset.jsonl"
    write_jsonl(eval_file, [json.loads(r) for r in eval_rows["record"]])
    sws, _ = import_to_workspace([sample_file], root / "ws-sample", overwrite=True)
    n_orig = len(chosen)
    s_copies = {n_orig + n: n for n in range(PLANTS)}   # originals are rows 0..199
    s_kinds = {n_orig + n: kind_list[n] for n in range(PLANTS)}
    s_exact = set(sws.samples(["sample_id", "duplicate_of"]).dropna()["sample_id"].astype(int))
    start = time.perf_counter()
    run_embed(sws)
    run_neighbors(sws, k=10)
    results["sample_rows"] = len(sws)
    results["embed_seconds"] = round(time.perf_counter() - start, 1)
    for name, kw in (("semantic_sample", {"minhash": None}),
                     ("minhash_sample", {"semantic": None}), ("both_sample", {})):
        start = time.perf_counter()
        frame = run_dedup(sws, force=True, **kw).value
        results[name] = {**detector_figures(frame, s_copies, s_kinds, s_exact),
                         "seconds": round(time.perf_counter() - start, 1)}
        print(name, results[name], flush=True)
    start = time.perf_counter()
    flags = run_decontaminate(sws, [eval_file], ngram=13, force=True).value
    src = np.array(["eval"] * 100 + ["gsm8k-not-eval" if i in set(gsm_ids) else "other"
                                     for i in np.sort(rest)], dtype=object)
    src = np.concatenate([np.array(["planted-original"] * PLANTS, dtype=object), src,
                          np.array(["planted-copy"] * PLANTS, dtype=object)])
    # the planted originals come from the whole pool: some may be GSM8K rows
    src[:PLANTS] = ["gsm8k-not-eval" if o in set(gsm_ids) else "other" for o in originals]
    emb = flags["by_embedding"].to_numpy()
    ngram = flags["by_ngram"].to_numpy()
    results["decontam_embedding_sample"] = {
        label: f"embedding {int(emb[src == label].sum())}, 13-gram "
               f"{int(ngram[src == label].sum())} of {int((src == label).sum())}"
        for label in ("eval", "gsm8k-not-eval", "other")}
    results["decontam_embedding_sample"]["seconds"] = round(time.perf_counter() - start, 1)
    print("embedding decontamination:", results["decontam_embedding_sample"], flush=True)
    (CACHE / "dedup_results.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
