"""Precomputed demo scores: shipped with the repo, copied into a new demo workspace only when
they belong to its samples, equal to a fresh computation, and announced in the app."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

import lm_reference as ref
from ui_fixture import REPO, fixture_ws  # noqa: F401

from core import demo
from core.atomic import read_json
from core.scores.ifd import run_ifd
from core.lm import load_causal_lm
from core.io import import_to_workspace
from core.workspace import Workspace

SHIPPED = REPO / "demo" / "demo-alpaca" / "scores"


@pytest.fixture(scope="module")
def alpaca_ws(data_dir, tmp_path_factory):
    """A workspace of the real demo rows, imported only (no embeddings needed here)."""
    ws, _ = import_to_workspace([data_dir / "alpaca_random_9k.jsonl.gz"],
                                tmp_path_factory.mktemp("demo") / "demo-alpaca")
    return ws


def _tiny_ws(root, n=5):
    frame = pd.DataFrame({"instruction": [f"Say {i}." for i in range(n)], "input": [""] * n,
                          "output": [f"{i}" for i in range(n)]})
    root.mkdir(parents=True)
    path = root / "in.jsonl"
    frame.to_json(path, orient="records", lines=True)
    ws, _ = import_to_workspace([path], root / "ws")
    return ws


def test_ship_then_copy_only_into_matching_samples(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "shipped_scores_dir", lambda name="alpaca": tmp_path / "shipped")
    ws = _tiny_ws(tmp_path / "a")
    ids = ws.samples(["sample_id"])["sample_id"].to_numpy()
    params = {"model": "SmolLM2-135M-Instruct", "dtype": "float32", "template": "none",
              "max_length": 512}
    ws.write_score("ifd", pd.DataFrame({"sample_id": ids, "ifd": np.linspace(0.5, 0.9, 5)}),
                   {"step": "scores/ifd.parquet", "key": "k1", "params": params, "rows": 4,
                    "inputs": {"samples": ws.samples_fingerprint()}, "model_path": "/x"})
    with pytest.raises(Exception, match="4 of 5"):
        demo.ship_scores(ws, scores=["ifd"])  # a partial run is not demo data
    meta = ws.score_meta("ifd") | {"rows": 5}
    ws.write_score("ifd", ws.read_score("ifd"), meta)
    demo.ship_scores(ws, scores=["ifd"])
    shipped = read_json(tmp_path / "shipped" / "ifd.json")
    assert shipped["key"] == "k1" and "model_path" not in shipped
    assert shipped["precomputed"]["command"] == (
        "python -m core score ifd --workspace workspaces/demo-alpaca --template none "
        "--max-length 512 --dtype float32")

    same = _tiny_ws(tmp_path / "b")
    demo._copy_demo_scores("alpaca", same)
    assert same.read_score("ifd").equals(ws.read_score("ifd"))
    note = demo.precomputed_note(same.score_meta("ifd"))
    assert "python -m core score ifd" in note and "float32" in note and "5 rows" in note

    other = _tiny_ws(tmp_path / "c", n=4)
    demo._copy_demo_scores("alpaca", other)
    assert other.score_names() == []  # other samples: nothing copied
    assert demo.precomputed_note(other.score_meta("ifd")) is None


@pytest.mark.lm
def test_shipped_demo_scores_cover_the_demo_and_match_the_reference(alpaca_ws):
    """The committed IFD / r-IFD files belong to the real demo rows, score every row (or say
    why not), equal a plain per-sample computation on a few rows, and are a cache hit for
    ``score ifd`` on a fresh demo workspace (the cache key does not depend on the machine)."""
    ws = alpaca_ws
    demo._copy_demo_scores("alpaca", ws)
    assert ws.score_names() == ["ifd", "rifd"]
    for name, score, reason in (("ifd", "ifd", "missing_reason"),
                                ("rifd", "rifd", "rifd_missing_reason")):
        frame = ws.read_score(name)
        meta = ws.score_meta(name)
        assert len(frame) == len(ws) == meta["rows"] == 9229
        assert frame["sample_id"].tolist() == sorted(ws.samples(["sample_id"])["sample_id"])
        finite = np.isfinite(frame[score])
        assert (finite != frame[reason].notna()).all()  # a score, or a reason: never both
        assert finite.mean() > 0.99
        assert meta["params"]["dtype"] == "float32" and "precomputed" in meta

    lm = load_causal_lm(dtype="float32")
    samples = ws.samples().set_index("sample_id")
    ifd, rifd = ws.read_score("ifd").set_index("sample_id"), \
        ws.read_score("rifd").set_index("sample_id")
    finite = np.isfinite(ifd["ifd"]).to_numpy()
    has_input = (samples.loc[ifd.index, "input"].fillna("").str.strip() != "").to_numpy()
    # rows without and with an input: r-IFD glues instruction and input together (§2)
    picked = ifd.index[finite & ~has_input][[0, 1000, 4000]].append(
        ifd.index[finite & has_input][[0, 2000]])
    for i in picked:
        row = samples.loc[i]
        want = ref.ifd_one(lm.model, lm.tokenizer, row["instruction"], row["input"],
                           row["output"], "none", 512)
        assert math.isclose(ifd.loc[i, "ifd"], want["ifd"], rel_tol=1e-4)
        want_r = ref.rifd_one(lm.model, lm.tokenizer, row["instruction"], row["input"],
                              row["output"], 512)
        assert math.isclose(rifd.loc[i, "rifd"], want_r["rifd"], rel_tol=1e-4)
    again = run_ifd(ws, sample_ids=picked.tolist(), model=lm, with_reverse=True)
    assert again["ifd"].cached and again["rifd"].cached


@pytest.mark.lm  # "Recompute" runs IFD on the fixture rows
def test_data_page_says_scores_were_precomputed_and_recomputes(fixture_ws, tmp_path,
                                                                monkeypatch):
    root = tmp_path / "ws"
    shutil.copytree(fixture_ws.root, root)
    ws = Workspace.open(root)
    meta = ws.score_meta("ifd")
    meta["precomputed"] = {"command": "python -m core score ifd --workspace W --dtype float32"}
    ws.write_score("ifd", ws.read_score("ifd"), meta)
    before = ws.read_score("ifd")

    monkeypatch.setenv("CHERRYPICK_WORKSPACE", str(root))
    monkeypatch.setenv("CHERRYPICK_HOME", str(tmp_path / "home"))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=300)
    at.run()
    at.switch_page("pages/data.py").run()
    assert not at.exception, at.exception
    from components.messages import plain

    notes = [i.value for i in at.info if i.value.startswith("Precomputed for this demo")]
    assert notes and plain("python -m core score ifd --workspace W") in notes[0]

    at.button(key="ifd_recompute").click().run()
    assert not at.exception and not at.error, (at.exception, at.error)
    after = Workspace.open(root)
    assert "precomputed" not in after.score_meta("ifd")  # computed here, so no longer shipped
    assert after.read_score("ifd")["sample_id"].tolist() == before["sample_id"].tolist()
    np.testing.assert_allclose(after.read_score("ifd")["ifd"], before["ifd"], rtol=1e-4)
    assert not [i for i in at.info if i.value.startswith("Precomputed for this demo")]


# ----- DS2 on the demo's real Claude rating (issue 15 item 7) ------------------------------
DS2_SHIPPED = "ds2_claude_ge_4_5"


def test_shipped_demo_ds2_is_the_curation_of_the_real_ratings(alpaca_ws):
    """The committed DS2 file covers every demo row, its classes are the workspace's own
    ``claude_ge_4_5`` ratings, its curated column follows DS2's rule from its own columns,
    and it names its inputs (samples and the kNN graph) and the command that recomputes it."""
    from core.scores.ratings import to_classes

    meta = read_json(SHIPPED / f"{DS2_SHIPPED}.json")
    frame = pd.read_parquet(SHIPPED / f"{DS2_SHIPPED}.parquet")
    samples = alpaca_ws.samples(["sample_id", "source_row", "claude_ge_4_5"])
    assert len(frame) == meta["rows"] == len(alpaca_ws) == 9229
    assert frame["sample_id"].tolist() == samples["sample_id"].tolist()
    classes, _ = to_classes(samples["claude_ge_4_5"], None, field="claude_ge_4_5",
                            rows=samples["source_row"].to_numpy())
    np.testing.assert_array_equal(frame["rating_class"], classes)
    params = meta["params"]
    assert (params["detector"], params["self_vote"], params["min_confidence"]) == \
        ("rank", False, 0.5)
    change = frame["flagged"] & (frame["confidence"] >= params["min_confidence"])
    np.testing.assert_array_equal(frame["curated"],
                                  np.where(change, frame["suggested"], frame["rating_class"]))
    assert meta["changed"] == int(change.sum()) > 0
    inputs = meta["precomputed"]["input_files"]
    assert inputs["samples.parquet"] == alpaca_ws.samples_fingerprint()
    assert set(inputs) == {"samples.parquet", "knn.npz"}
    assert meta["precomputed"]["command"] == (
        "python -m core curate --workspace workspaces/demo-alpaca --rating-column claude_ge_4_5")
    note = demo.precomputed_note(meta)
    assert note.startswith("Precomputed for this demo (9,229 rows") and "curate" in note
    # without the kNN graph it was computed from, the copy is refused
    demo._copy_demo_scores("alpaca", alpaca_ws)
    assert DS2_SHIPPED not in alpaca_ws.score_names()


@pytest.mark.slow  # builds a 240-row demo twice: embeddings, kNN, map, DS2
def test_demo_build_opens_with_ds2_and_uses_the_shipped_copy(data_dir, tmp_path, monkeypatch):
    """``build_demo`` ends with DS2 curated on the rating column, so the Audit page has its
    queue at once; a shipped DS2 whose samples and kNN graph match is copied and then is a
    cache hit, not recomputed; one computed from another graph is not copied."""
    import gzip

    from real_rows import first_rows

    rows = first_rows(data_dir / "alpaca_random_9k.jsonl.gz", 240)
    small = tmp_path / "data"
    small.mkdir()
    with gzip.open(small / "alpaca_random_9k.jsonl.gz", "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    monkeypatch.setenv("CHERRYPICK_DATA", str(small))
    shipped = tmp_path / "shipped"
    monkeypatch.setattr(demo, "shipped_scores_dir", lambda name="alpaca": shipped)

    first = demo.build_demo("alpaca", root=tmp_path / "one")
    made = first.score_meta(DS2_SHIPPED)
    assert made is not None and made["rows"] == 240 and "precomputed" not in made
    demo.ship_scores(first, scores=[DS2_SHIPPED])

    second = demo.build_demo("alpaca", root=tmp_path / "two")
    copied = second.score_meta(DS2_SHIPPED)
    assert copied["precomputed"]["input_files"]["knn.npz"] == second.fingerprint("knn.npz")
    assert copied["created"] == made["created"]  # the copy, not a new computation
    assert second.read_score(DS2_SHIPPED).equals(first.read_score(DS2_SHIPPED))

    meta = read_json(shipped / f"{DS2_SHIPPED}.json")
    meta["precomputed"]["input_files"]["knn.npz"] = "another-graph"
    (shipped / f"{DS2_SHIPPED}.json").write_text(json.dumps(meta))
    third = demo.build_demo("alpaca", root=tmp_path / "three")
    assert "precomputed" not in third.score_meta(DS2_SHIPPED)  # computed here instead

    monkeypatch.setenv("CHERRYPICK_WORKSPACE", str(second.root))
    monkeypatch.setenv("CHERRYPICK_HOME", str(tmp_path / "home"))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=300)
    at.run()
    at.switch_page("pages/audit.py").run()
    assert not at.exception, at.exception
    assert not [i for i in at.info if "No DS2 scores" in i.value]
    assert at.dataframe  # the queue
