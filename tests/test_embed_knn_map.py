"""Embeddings, nearest neighbours, the 2-D map and clusters (core.embed, core.knn, core.maps).

Every check compares against an independent plain computation written here: a direct
SentenceTransformer call, brute-force numpy similarities, numpy SVD for PCA.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core import embed, knn, maps
from core.errors import Cancelled, InputError
from core.workspace import Workspace
from real_rows import first_rows

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


# ----- fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    return pd.DataFrame(first_rows(DATA / "alpaca_random_9k.jsonl.gz", 30))


@pytest.fixture(scope="module")
def alpaca_400() -> pd.DataFrame:
    """400 real Alpaca rows (rows 1,000-1,399), as the importer reads them."""
    from core.io import read_dataset

    frame = read_dataset(DATA / "alpaca_random_9k.jsonl.gz", limit=1400).samples
    return frame.iloc[1000:].reset_index(drop=True)


@pytest.fixture(scope="module")
def plain_vectors(rows) -> np.ndarray:
    """The reference: a fresh SentenceTransformer, one plain encode call."""
    from sentence_transformers import SentenceTransformer

    texts = [_full_text(r) for r in rows.to_dict("records")]
    model = SentenceTransformer(str(embed.default_model_path()), device="cpu")
    return model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)


def _full_text(row: dict) -> str:
    text = row["instruction"]
    if row.get("input"):
        text += "\n" + row["input"]
    return text + "\n" + row["output"]


def _samples_frame(rows: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "sample_id": np.arange(len(rows), dtype=np.int64),
        "source_row": np.arange(len(rows), dtype=np.int64),
        "instruction": rows["instruction"], "input": rows["input"], "output": rows["output"],
        "record": [json.dumps(r) for r in rows.to_dict("records")]})


def _clustered(n: int, dim: int, centres: int, spread: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centre = rng.normal(size=(centres, dim))
    x = centre[rng.integers(0, centres, n)] + spread * rng.normal(size=(n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def _brute_force(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sims = x.astype(np.float64) @ x.astype(np.float64).T
    np.fill_diagonal(sims, -np.inf)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(sims, order, axis=1)


# ----- embeddings ----------------------------------------------------------------------------
def test_embedding_text_recipes():
    frame = pd.DataFrame({"instruction": ["Add.", "Name a colour."],
                          "input": ["2 and 3", None], "output": ["5", "Blue"]})
    assert embed.embedding_text(frame, "instruction") == ["Add.\n2 and 3", "Name a colour."]
    assert embed.embedding_text(frame) == ["Add.\n2 and 3\n5", "Name a colour.\nBlue"]
    with pytest.raises(InputError):
        embed.embedding_text(frame, "everything")


@pytest.mark.slow  # loads the embedding model twice (~10 s)
def test_embed_texts_equals_plain_sentence_transformer(rows, plain_vectors):
    ours = embed.embed_texts(embed.embedding_text(rows), batch_size=64)
    assert ours.shape == (30, 384) and ours.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(ours, plain_vectors, atol=1e-5)


@pytest.mark.slow  # a real embedding pass (~3 s)
def test_length_sorted_batches_keep_caller_order(rows, plain_vectors):
    texts = embed.embedding_text(rows)
    perm = np.random.default_rng(3).permutation(len(texts))[:12]   # unsorted lengths
    calls = []
    ours = embed.embed_texts([texts[i] for i in perm], batch_size=5,
                             progress=lambda d, t, n: calls.append((d, t)))
    np.testing.assert_allclose(ours, plain_vectors[perm], atol=1e-5)
    assert calls == [(5, 12), (10, 12), (12, 12)]


@pytest.mark.slow  # several real embedding runs (~5 s)
def test_run_embed_resumes_after_cancel_and_records_model(tmp_path, rows, plain_vectors):
    samples = _samples_frame(rows)
    ws = Workspace.create(tmp_path / "ws", samples, source={})

    def cancel_after_first_chunk(done, total, note):
        if done >= 8:
            raise Cancelled("stop")

    with pytest.raises(Cancelled):
        embed.run_embed(ws, chunk_size=8, batch_size=8, progress=cancel_after_first_chunk,
                        precision="fp32")
    assert not ws.exists("embeddings.npy")
    assert len(list(ws.root.glob("embeddings.npy.parts/*/chunk-*.parquet"))) == 1

    seen = []
    resumed = embed.run_embed(ws, chunk_size=8, batch_size=8, precision="fp32",
                              progress=lambda d, t, n: seen.append((d, t, n)))
    assert seen[0] == (8, 30, "resuming")
    # the same vectors as one uninterrupted plain encode of all 30 rows
    np.testing.assert_allclose(resumed.value, plain_vectors, atol=1e-5)
    np.testing.assert_array_equal(np.load(ws.path("embeddings.npy")), resumed.value)
    meta = json.loads(ws.path("embeddings.json").read_text())
    assert meta["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert meta["recipe"] == "full" and meta["dim"] == 384 and meta["rows"] == 30
    assert embed.run_embed(ws, chunk_size=8, precision="fp32").cached

    # a different text recipe is a different result
    other = embed.run_embed(ws, recipe="instruction", chunk_size=64, precision="fp32")
    assert not other.cached and ws.meta("embeddings.npy")["recipe"] == "instruction"
    assert not np.allclose(other.value, plain_vectors, atol=1e-3)


@pytest.mark.slow  # loads the embedding model (~7 s when it is the first)
def test_batches_follow_token_counts_not_characters(monkeypatch):
    # long in characters but few word pieces, against short in characters but many pieces
    texts = ["a" * 300, "zq xj vk wp " * 6, "b" * 200, "qz jx kv pw " * 5, "hello"]
    model = embed.load_embedder()
    counts = embed.token_lengths(model, texts)
    assert counts[0] < counts[1] and len(texts[0]) > len(texts[1])
    batches = []
    real = model.encode

    def spy(batch, *args, **kwargs):
        batches.append(list(batch))
        return real(batch, *args, **kwargs)

    monkeypatch.setattr(model, "encode", spy)
    embed.embed_texts(texts, model, batch_size=2)
    want = [texts[i] for i in np.argsort(-counts, kind="stable")]
    assert [t for b in batches for t in b] == want


@pytest.mark.slow  # embeds 400 real rows twice (~30 s)
def test_bf16_embeddings_keep_the_fp32_neighbours(alpaca_400):
    texts = embed.embedding_text(alpaca_400)
    exact = embed.embed_texts(texts, precision="fp32")
    fast_model = embed.load_embedder(precision="bf16")
    assert embed.precision_of(fast_model) == "bf16"
    fast = embed.embed_texts(texts, fast_model)
    assert fast.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(fast, axis=1), 1.0, atol=1e-6)
    cos = np.sum(exact * fast, axis=1)
    assert np.abs(fast - exact).max() > 1e-4, "bf16 weights were not used"
    assert cos.min() > 0.999 and cos.mean() > 0.9999
    truth, _ = knn.knn_search(exact, k=10, method="exact")
    found, _ = knn.knn_search(fast, k=10, method="exact")
    assert knn.recall_at_k(found, truth) >= 0.99


@pytest.mark.slow  # real fp32 and bf16 embedding runs (~3 s)
def test_precision_is_part_of_the_cache_key_and_the_sidecar(tmp_path, rows):
    ws = Workspace.create(tmp_path / "ws", _samples_frame(rows.iloc[:12]), source={})
    exact = embed.run_embed(ws, precision="fp32")
    key32 = ws.meta("embeddings.npy")["key"]
    # fp32 keys are those of before the option existed: old workspaces stay up to date
    assert "precision" not in ws.meta("embeddings.npy")["params"]
    fast = embed.run_embed(ws, precision="bf16")
    meta = ws.meta("embeddings.npy")
    assert not fast.cached and meta["key"] != key32
    assert meta["params"]["precision"] == "bf16" and meta["precision"] == "bf16"
    assert not np.array_equal(fast.value, exact.value)
    assert embed.run_embed(ws, precision="bf16").cached
    auto = embed.run_embed(ws)  # the default resolves by what this CPU runs fast
    assert auto.cached == (embed.resolve_precision("auto") == "bf16")
    assert embed.resolve_precision("auto") == ("bf16" if embed.fast_bf16("cpu") else "fp32")
    with pytest.raises(InputError):
        embed.run_embed(ws, precision="int4")


# ----- nearest neighbours --------------------------------------------------------------------
def test_exact_knn_equals_brute_force_with_duplicates():
    x = _clustered(2000, 32, centres=20, spread=0.5, seed=0)
    x[17] = x[1000]          # an exact duplicate pair
    x[[5, 6, 7]] = x[4]      # four identical rows
    idx, sims = knn.knn_search(x, k=10, method="exact")
    ref_idx, ref_sims = _brute_force(x, 11)
    ref_idx, ref_sims, next_sims = ref_idx[:, :10], ref_sims[:, :10], ref_sims
    assert idx.shape == (2000, 10) and idx.dtype == np.int64 and sims.dtype == np.float32
    assert not (idx == np.arange(2000)[:, None]).any()          # self never listed
    np.testing.assert_allclose(sims, ref_sims, atol=1e-5)        # same similarities, ordered
    # reported similarities are the true ones of the reported rows
    np.testing.assert_allclose(sims, np.einsum("nd,nkd->nk", x, x[idx]), atol=1e-5)
    assert all(len(set(row)) == 10 for row in idx)
    # indices differ from the reference only inside ties (equal similarities swap places)
    gaps = np.abs(np.diff(next_sims, axis=1))
    tied = np.zeros_like(ref_sims, dtype=bool)
    tied[:, 1:] |= gaps[:, :9] < 1e-5
    tied |= gaps[:, :10] < 1e-5
    assert ((idx == ref_idx) | tied).all() and (idx == ref_idx).mean() > 0.99
    assert idx[17, 0] == 1000 and idx[1000, 0] == 17 and sims[17, 0] == pytest.approx(1, abs=1e-5)
    for i in (4, 5, 6, 7):
        assert set(idx[i, :3]) == {4, 5, 6, 7} - {i}
        np.testing.assert_allclose(sims[i, :3], 1.0, atol=1e-5)


def test_many_identical_rows_still_exclude_self():
    x = np.tile(_clustered(1, 8, 1, 0.0, seed=1), (12, 1))     # 12 identical rows
    idx, sims = knn.knn_search(x, k=3, method="exact")
    assert not (idx == np.arange(12)[:, None]).any()
    np.testing.assert_allclose(sims, 1.0, atol=1e-5)


def test_fewer_rows_than_k_clamps_k():
    x = _clustered(4, 8, 2, 0.3, seed=2)
    idx, sims = knn.knn_search(x, k=10)
    assert idx.shape == (4, 3)
    for i in range(4):
        assert set(idx[i]) == {0, 1, 2, 3} - {i}
    assert knn.knn_search(x[:1], k=10)[0].shape == (1, 0)


@pytest.mark.slow  # builds an HNSW index on 10,000 points (~3 s)
def test_hnsw_recall_at_10_on_10k_clustered_points():
    x = _clustered(10_000, 32, centres=100, spread=0.35, seed=4)
    exact, _ = knn.knn_search(x, k=10, method="exact")
    approx, approx_sims = knn.knn_search(x, k=10, method="hnsw")
    assert not (approx == np.arange(len(x))[:, None]).any()
    hits = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
    assert hits >= 0.95
    assert knn.recall_at_k(approx, exact) == pytest.approx(hits)
    assert knn.resolve_method("auto", 10_000) == "exact"
    assert knn.resolve_method("auto", knn.EXACT_THRESHOLD + 1) == "hnsw"


# ----- map and clusters ----------------------------------------------------------------------
@pytest.mark.slow  # several UMAP fits (~10 s)
def test_umap_is_seeded_and_uses_our_graph(monkeypatch):
    import pynndescent
    import umap.umap_

    def no_second_search(*args, **kwargs):
        raise AssertionError("UMAP ran its own neighbour search")

    monkeypatch.setattr(umap.umap_, "nearest_neighbors", no_second_search)
    monkeypatch.setattr(pynndescent.NNDescent, "__init__", no_second_search)
    x = _clustered(300, 16, centres=3, spread=0.2, seed=5)
    idx, sims = knn.knn_search(x, k=10)
    first = maps.umap_layout(idx, sims, seed=0, embeddings=x)
    again = maps.umap_layout(idx, sims, seed=0, embeddings=x)
    other = maps.umap_layout(idx, sims, seed=1, embeddings=x)
    assert first.shape == (300, 2) and first.dtype == np.float32
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)
    # the layout keeps neighbours close: most kNN pairs are nearer than random pairs
    near = np.linalg.norm(first[:, None, :] - first[idx[:, :5]], axis=2).mean()
    rand = np.linalg.norm(first - first[np.random.default_rng(0).permutation(300)], axis=1)
    assert near < 0.5 * rand.mean()


@pytest.mark.slow  # embeds real rows; loads the embedding model (~6 s)
def test_pca_fallback_for_ten_rows(tmp_path, rows):
    ws = Workspace.create(tmp_path / "ws", _samples_frame(rows.iloc[:10]), source={})
    emb = embed.run_embed(ws).value
    knn.run_neighbors(ws, k=10)
    assert ws.meta("knn.npz")["k"] == 9 and "clamped" in ws.meta("knn.npz")["note"]
    result = maps.run_map(ws, seed=0)
    meta = ws.meta("map.parquet")
    assert meta["layout"] == "pca" and "PCA" in meta["note"]
    frame = ws.map()
    assert list(frame.columns) == ["sample_id", "x", "y", "cluster"]
    centred = emb.astype(np.float64) - emb.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    ref = centred @ vt[:2].T
    ours = frame[["x", "y"]].to_numpy()
    np.testing.assert_allclose(np.abs(ours), np.abs(ref), atol=1e-4)   # up to axis sign
    assert result.value["map"]["cluster"].nunique() == 2


@pytest.mark.slow  # embeds, then the first UMAP fit compiles numba (~15 s)
def test_run_neighbors_and_map_on_a_workspace(tmp_path, rows):
    ws = Workspace.create(tmp_path / "ws", _samples_frame(rows), source={})
    with pytest.raises(InputError):
        knn.run_neighbors(ws)
    emb = embed.run_embed(ws).value
    result = knn.run_neighbors(ws, k=5)
    ref_idx, ref_sims = _brute_force(emb, 5)
    idx, sims = ws.knn()
    np.testing.assert_allclose(sims, ref_sims, atol=1e-5)
    assert (idx == ref_idx).mean() > 0.95
    assert knn.run_neighbors(ws, k=5).cached and not result.cached
    assert ws.meta("knn.npz")["params"]["method"] == "exact"

    first = maps.run_map(ws, seed=0)
    frame = ws.map()
    assert ws.meta("map.parquet")["layout"] == "umap" and len(frame) == 30
    assert frame["sample_id"].tolist() == list(range(30))
    clusters = json.loads(ws.path("clusters.json").read_text())
    assert set(clusters["titles"]) == set(clusters["sizes"]) == {"0", "1"}
    assert sum(clusters["sizes"].values()) == 30
    assert all(isinstance(t, str) and t for t in clusters["titles"].values())
    assert ws.cluster_titles() == {int(k): v for k, v in clusters["titles"].items()}
    assert maps.run_map(ws, seed=0).cached and not first.cached


def test_default_cluster_count_and_size_order():
    assert maps.default_n_clusters(9229) == round(np.sqrt(9229 / 20))
    assert maps.default_n_clusters(100) == 2 and maps.default_n_clusters(10**6) == 40
    x = _clustered(600, 16, centres=4, spread=0.1, seed=6)
    labels = maps.cluster_embeddings(x, n_clusters=4, seed=0)
    sizes = np.bincount(labels)
    assert len(sizes) == 4 and list(sizes) == sorted(sizes, reverse=True)
    np.testing.assert_array_equal(labels, maps.cluster_embeddings(x, n_clusters=4, seed=0))


def test_cluster_titles_name_the_distinctive_words():
    poems = [f"Write a poem about the {w}." for w in
             ("sea", "moon", "autumn", "city", "river", "night", "rain", "forest")]
    sums = [f"Compute the sum of {a} and {b}." for a, b in
            [(1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)]]
    titles = maps.cluster_titles(poems + sums, [0] * 8 + [1] * 8, top_terms=2)
    assert set(titles[0].split(", ")) == {"poem", "write"}
    assert set(titles[1].split(", ")) == {"compute", "sum"}
    blank = maps.cluster_titles(["the", "a", "of"], [0, 0, 1])
    assert blank == {0: "cluster 0", 1: "cluster 1"}
