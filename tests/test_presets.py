"""The papers' presets (docs/methods.md §1a) against plain rewrites of their reference scripts,
on the demo's shipped IFD / r-IFD scores of 9,229 real Alpaca rows.

The rewrites below follow the scripts line by line in plain Python / numpy and never import
``core.select``: Cherry_LLM ``cherry_seletion/data_by_IFD.py``, Superfiltering
``code_ifd/select_data.py`` and ``code_diversity_fla/do_fla.py`` (submodlib's facility
location, here a plain greedy on the full kernel), Reflection_Tuning
``selection_code/get_select_data.py`` (its filter, on original pairs).
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import cdist
from streamlit.testing.v1 import AppTest

from ui_fixture import REPO, fixture_ws  # noqa: F401

from core.cli import main
from core.io import import_to_workspace
from core.select import (Context, Recipe, facility_location, load_selection, named_ranking,
                         run_selection, score_table, with_ranking)
from core.select.recipe import make_recipe
from core.workspace import Workspace

SHIPPED = REPO / "demo" / "demo-alpaca" / "scores"


@pytest.fixture(scope="module")
def demo_ws(data_dir, tmp_path_factory) -> Workspace:
    """The demo's real rows with the shipped ifd and rifd scores (no embeddings)."""
    ws, _ = import_to_workspace([data_dir / "alpaca_random_9k.jsonl.gz"],
                                tmp_path_factory.mktemp("presets") / "demo-alpaca")
    import json

    for name in ("ifd", "rifd"):
        meta = json.loads((SHIPPED / f"{name}.json").read_text("utf-8"))
        assert meta["inputs"]["samples"] == ws.samples_fingerprint()
        ws.write_score(name, pd.read_parquet(SHIPPED / f"{name}.parquet"), meta)
    return ws


def records(ws: Workspace) -> list[dict]:
    """The rows as the scripts see them: a list of dicts in dataset order with the scores."""
    ifd = pd.read_parquet(ws.path("scores", "ifd.parquet"))
    rifd = pd.read_parquet(ws.path("scores", "rifd.parquet"))
    frame = ifd.merge(rifd, on="sample_id").sort_values("sample_id")
    out = []
    for row in frame.itertuples(index=False):
        out.append({"index": int(row.sample_id), "ifd": float(row.ifd),
                    "ifd_ppl": float(row.ifd_ppl), "rifd_ppl": float(row.rifd_ppl),
                    "truncated": bool(row.truncated) if not pd.isna(row.truncated) else False})
    return out


# ----- plain rewrites of the reference scripts ----------------------------------------------
def cherry_reference(data: list[dict], rate: float) -> list[int]:
    """data_by_IFD.py: skip truncated rows and mean_rate > 1, sort (rate, i), take the tail;
    returns the tail best first (the script writes it in dataset order)."""
    mean_rate_list = []
    for d in data:
        if math.isnan(d["ifd"]) or d["truncated"]:
            continue
        if d["ifd"] > 1:
            continue
        mean_rate_list.append((d["ifd"], d["index"]))
    mean_rate_list = sorted(mean_rate_list)
    number = int(len(mean_rate_list) * rate)
    tail = mean_rate_list[len(mean_rate_list) - number:] if number else []
    return [i for _, i in reversed(tail)]


def superfiltering_reference(data: list[dict], rate: float, key: str = "ifd_ppl") -> list[int]:
    """select_data.py with int(len(data) × rate) for Alpaca's int(52002 × rate)."""
    sample_num = int(len(data) * rate)
    filtered = [x for x in data if isinstance(x[key], (int, float)) and x[key] < 1]
    ranked = sorted(filtered, key=lambda x: (0, 0) if math.isnan(x[key]) else (1, x[key]),
                    reverse=True)
    return [x["index"] for x in ranked[:sample_num]]


def plain_facility_location(x: np.ndarray, budget: int) -> tuple[list[int], float]:
    """Greedy on the full kernel K = exp(-‖x_i - x_j‖ / dim): each step the largest marginal
    gain Σ_i max(K[i, j] - best_i, 0); an exact tie goes to the later index, as submodlib's
    max-heap of (gain, index)."""
    kernel = np.exp(-cdist(x.astype(np.float64), x.astype(np.float64)) / x.shape[1])
    best = np.zeros(len(x))
    picks: list[int] = []
    for _ in range(budget):
        gains = np.maximum(kernel - best[:, None], 0.0).sum(axis=0)
        gains[picks] = -np.inf
        j = len(gains) - 1 - int(np.argmax(gains[::-1]))
        picks.append(j)
        best = np.maximum(best, kernel[:, j])
    return picks, float(kernel[:, picks].max(axis=1).sum())


def text_vectors(texts: list[str], dim: int = 256) -> np.ndarray:
    """Cheap real-text embeddings (TF-IDF → SVD, L2-normalised): which text vectors feed the
    greedy does not matter for the check, that they come from real rows does."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    tfidf = TfidfVectorizer(min_df=2).fit_transform(texts)
    x = TruncatedSVD(dim, random_state=0).fit_transform(tfidf)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def run_preset(ws: Workspace, name: str, ratio=None, n=None, ctx=None, ifd_num=None):
    recipe = with_ranking(make_recipe("threshold", ratio=ratio, budget=n),
                          named_ranking(name, ifd_num=ifd_num))
    frame = score_table(ws, recipe.columns())
    return recipe.apply(frame, ctx or Context(n_all=len(ws)))


# ----- the presets on the demo scores -------------------------------------------------------
@pytest.mark.parametrize("rate", [0.05, 0.10])
def test_cherry_equals_data_by_ifd(demo_ws, rate):
    want = cherry_reference(records(demo_ws), rate)
    got = run_preset(demo_ws, "cherry", ratio=rate)
    assert got.sample_ids == want and len(want) > 400
    assert got.recipe["budget"]["ratio_of"] == "ranked"  # int(rate × rows kept)


@pytest.mark.parametrize("rate", [0.05, 0.10])
def test_superfiltering_equals_select_data(demo_ws, rate):
    want = superfiltering_reference(records(demo_ws), rate)
    got = run_preset(demo_ws, "superfiltering", ratio=rate)
    assert got.sample_ids == want and len(want) == int(len(demo_ws) * rate)
    # ranking ifd_ppl is not ranking ifd: the two top sets differ on real scores
    assert set(want) != set(cherry_reference(records(demo_ws), rate))


@pytest.mark.slow
def test_superfiltering_d_equals_a_plain_greedy(demo_ws):
    ifd_num, fla_num = 2000, 200
    top = superfiltering_reference(records(demo_ws), 1.0)[:ifd_num]
    samples = demo_ws.samples(["sample_id", "instruction", "input", "output"]).set_index(
        "sample_id")
    texts = [f"{r.instruction}\n{r.input}\n{r.output}" for r in samples.loc[top].itertuples()]
    x = text_vectors(texts)
    first = plain_facility_location(x, 1)[0][0]
    x[(first + 7) % ifd_num] = x[first]  # a copy of a row that is picked: an exact tie
    picks, objective = plain_facility_location(x, fla_num)
    full = np.zeros((len(demo_ws), x.shape[1]), dtype=np.float32)
    full[top] = x
    got = run_preset(demo_ws, "superfiltering-d", n=fla_num, ifd_num=ifd_num,
                     ctx=Context(embeddings=full, n_all=len(demo_ws)))
    assert got.sample_ids == [top[j] for j in picks]
    notes = next(s["notes"] for s in got.steps if s["type"] == "superfiltering_d")
    assert notes["objective"] == pytest.approx(objective, rel=1e-9)
    assert notes["ifd_num"] == ifd_num and notes["fla_num"] == fla_num


def test_reflection_preset_is_only_the_filter_and_says_so(demo_ws):
    data = records(demo_ws)
    want = [d["index"] for d in data if d["ifd_ppl"] < 1 and d["rifd_ppl"] < 1]
    got = run_preset(demo_ws, "reflection", ratio=0.1)  # the script has no budget
    assert got.sample_ids == want
    step = next(s for s in got.steps if s["type"] == "reflection_filter")
    assert "not the method" in step["notes"]["note"] and "filter" in step["step"]


def test_ties_and_missing_scores_follow_each_script():
    # exact ties at the cut: Cherry takes the later sample, Superfiltering the earlier one
    ifd = [0.5, 0.9, 0.9, 0.9, 1.0, 1.2, np.nan, 0.9, 0.3, 0.9]
    truncated = [False, False, True, False, False, False, False, False, False, False]
    data = [{"index": i, "ifd": v, "ifd_ppl": v, "truncated": t}
            for i, (v, t) in enumerate(zip(ifd, truncated))]
    frame = pd.DataFrame({"sample_id": range(10), "ifd.ifd": ifd, "ifd.ifd_ppl": ifd,
                          "ifd.truncated": truncated})
    for name, reference in (("cherry", cherry_reference),
                            ("superfiltering", superfiltering_reference)):
        for rate in (0.2, 0.3, 0.5):
            recipe = with_ranking(make_recipe("threshold", ratio=rate), named_ranking(name))
            got = recipe.apply(frame, Context(n_all=10)).sample_ids
            assert got == reference(data, rate), (name, rate)
    # by hand: Cherry keeps 0 1 3 4 7 8 9 (≤ 1, 2 truncated), int(7 × 0.3) = 2: 4 (ifd 1.0),
    # then the latest of the 0.9 ties; Superfiltering drops 4 (not < 1), takes int(10 × 0.3)
    assert cherry_reference(data, 0.3) == [4, 9]
    assert superfiltering_reference(data, 0.3) == [1, 2, 3]


# ----- the greedy itself ----------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lazy_greedy_equals_plain_greedy_with_copies(seed):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(6, 16))
    x = centers[rng.integers(0, 6, 300)] + 0.3 * rng.normal(size=(300, 16))
    x[rng.integers(0, 300, 40)] = x[7]  # many copies of one row
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    picks, objective = plain_facility_location(x, 60)
    got = facility_location(x, 60)
    assert got.picks.tolist() == picks
    assert got.objective == pytest.approx(objective, rel=1e-12)
    assert np.all(np.diff(got.gains) <= 1e-12)  # submodular: gains never grow


def test_facility_location_beyond_distinct_rows_takes_copies_with_zero_gain():
    x = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    got = facility_location(x, 3)
    assert sorted(got.picks.tolist()) == [0, 1, 2] and got.gains[-1] == 0.0
    assert facility_location(x, 0).picks.tolist() == []


# ----- errors, CLI, saved selections, the page ------------------------------------------------
def test_preset_without_its_score_is_a_one_line_error(tmp_path):
    src = tmp_path / "in.jsonl"
    pd.DataFrame({"instruction": ["a", "b"], "input": ["", ""], "output": ["x", "y"]}).to_json(
        src, orient="records", lines=True)
    import_to_workspace([src], tmp_path / "ws")
    for preset, score in (("cherry", "ifd"), ("superfiltering", "ifd"), ("reflection", "ifd")):
        proc = subprocess.run([sys.executable, "-m", "core", "select", "--workspace",
                               str(tmp_path / "ws"), "--name", "p", "--preset", preset],
                              capture_output=True, text=True, cwd=REPO)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and f"scores/{score}.parquet" in lines[0]
        assert "python -m core score ifd" in lines[0]


def test_cli_refuses_flags_a_preset_does_not_take(demo_ws, capsys):
    ws = str(demo_ws.root)
    assert main(["select", "--workspace", ws, "--name", "r", "--preset", "reflection",
                 "--ratio", "0.1"]) == 2
    assert "no budget" in capsys.readouterr().err
    assert main(["select", "--workspace", ws, "--name", "c", "--preset", "cherry",
                 "--ratio-of", "all", "--ratio", "0.1"]) == 2
    assert "fixes its budget's base" in capsys.readouterr().err


def test_cli_preset_is_saved_rerun_and_diffed(demo_ws, capsys):
    ws = str(demo_ws.root)
    for name, preset in (("sf", "superfiltering"), ("ch", "cherry")):
        assert main(["select", "--workspace", ws, "--name", name, "--preset", preset,
                     "--ratio", "0.05", "--force"]) == 0
    out = capsys.readouterr().out
    assert "Superfiltering IFD" in out and "Cherry LLM IFD" in out
    saved = load_selection(demo_ws, "sf")
    assert saved["recipe"]["ranking"]["type"] == "superfiltering"
    assert saved["sample_ids"] == superfiltering_reference(records(demo_ws), 0.05)
    # the saved recipe file reruns to the same ids (the preset type is in the registry)
    again = run_selection(demo_ws, Recipe.from_dict(saved["recipe"]))
    assert again.sample_ids == saved["sample_ids"]
    assert main(["diff", "--workspace", ws, "sf", "ch"]) == 0
    assert "common" in capsys.readouterr().out


def test_page_offers_the_presets_and_saves_one(fixture_ws, tmp_path, monkeypatch):  # noqa: F811
    root = tmp_path / "ws"
    shutil.copytree(fixture_ws.root, root)
    for leftover in ("selections", "exports", "audit.jsonl"):
        path = root / leftover
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    ws = Workspace.open(root)
    ifd = ws.read_score("ifd", ["sample_id", "ifd_ppl"])  # r-IFD for the reflection preset
    ws.write_score("rifd", pd.DataFrame({"sample_id": ifd["sample_id"],
                                         "rifd_ppl": np.where(ifd["sample_id"] % 2, 1.5, 0.5)}),
                   {"step": "scores/rifd.parquet", "params": {}, "rows": len(ifd)})
    monkeypatch.setenv("CHERRYPICK_WORKSPACE", str(root))
    monkeypatch.setenv("CHERRYPICK_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CHERRYPICK_DATA", str(tmp_path / "no-data"))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=90)
    at.session_state["workspace_root"] = str(root)
    at.switch_page("pages/select_export.py")
    at.run()
    assert not at.exception, at.exception
    policy = at.radio(key="sel_policy")
    labels = " | ".join(policy.options)  # the papers by name, each a preset or a baseline
    for paper in ("Cherry LLM", "Superfiltering (", "Superfiltering.D", "Reflection-Tuning",
                  "Long Is More", "Random", "k-center"):
        assert paper in labels, paper
    policy.set_value("cherry").run()
    assert not at.exception, at.exception
    at.radio(key="sel_budget_mode").set_value("all").run()
    at.checkbox(key="sel_rejected").uncheck().run()
    if at.checkbox(key="sel_dups").value:
        at.checkbox(key="sel_dups").uncheck().run()
    at.text_input(key="sel_name").set_value("cherry-all").run()
    at.button(key="sel_save").click().run()
    assert not at.exception, at.exception
    saved = load_selection(ws, "cherry-all")
    assert saved["recipe"]["ranking"]["type"] == "cherry"
    want = cherry_reference(records_of_fixture(ws), 1.0)
    assert saved["sample_ids"] == want and want
    # the reflection preset says it is only the rule's filter here
    at.radio(key="sel_policy").set_value("reflection-tuning").run()
    assert not at.exception, at.exception
    assert any("not the method" in w.value for w in at.warning)
    kept = ifd[(ifd["ifd_ppl"] < 1) & (ifd["sample_id"] % 2 == 0)]
    assert next(m.value for m in at.metric if m.label == "Kept") == f"{len(kept):,}"


def records_of_fixture(ws: Workspace) -> list[dict]:
    ifd = pd.read_parquet(ws.path("scores", "ifd.parquet")).sort_values("sample_id")
    return [{"index": int(r.sample_id), "ifd": float(r.ifd),
             "truncated": bool(r.truncated) if not pd.isna(r.truncated) else False}
            for r in ifd.itertuples(index=False)]
