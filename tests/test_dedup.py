"""Near-duplicates (core.dedup) on real rows: planted, deterministically edited copies of
real Alpaca rows are grouped with their originals, exact duplicates are counted as the
importer counts them, keepers follow the chosen score, and the recipe filter, the Explore
colouring and the group view use the result. MinHash is checked against brute-force Jaccard.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core import dedup
from core.cli import main
from core.embed import run_embed
from core.errors import InputError
from core.io import import_to_workspace
from core.knn import run_neighbors
from core.select import make_recipe, run_selection
from real_rows import first_rows

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ORIGINALS = 150     # real Alpaca rows in the test workspace
LONG_WORDS = 60     # rows at least this long get a planted copy
SYNONYMS = {"write": "compose", "describe": "explain", "important": "crucial",
            "use": "utilize", "make": "create", "good": "great", "help": "assist",
            "many": "numerous", "example": "instance", "different": "various",
            "provide": "give", "also": "additionally", "can": "could", "big": "large",
            "people": "individuals", "often": "frequently", "show": "demonstrate"}


# ----- deterministic edits (bench/dedup.py plants its copies with these too) -------------
def light_edit(text: str, seed: int) -> str:
    """A lightly edited copy: one word dropped (odd seeds) or replaced by a typo (even
    seeds), the first letter re-cased, spacing before punctuation changed; deterministic in
    ``seed``."""
    words = text.split()
    if len(words) < 4:
        return text.upper()
    at = 1 + seed % (len(words) - 2)
    words[at:at + 1] = [] if seed % 2 else [words[at][::-1] + "x"]
    out = " ".join(words).replace(",", " ,").replace(".", " .")
    return out[:1].swapcase() + out[1:]


def paraphrase(text: str, seed: int = 0) -> str:
    """A rephrased copy: common words replaced by synonyms and the first two sentences
    swapped; the wording changes, the meaning does not."""
    def swap(match: re.Match) -> str:
        word = match.group(0)
        new = SYNONYMS.get(word.lower())
        return word if new is None else (new.capitalize() if word[0].isupper() else new)

    out = re.sub(r"[A-Za-z]+", swap, text)
    parts = re.split(r"(?<=[.!?])\s+", out)
    if len(parts) > 2 and seed % 2 == 0:
        parts[0], parts[1] = parts[1], parts[0]
    return " ".join(parts)


def edited_record(row: dict, kind: str, seed: int) -> dict:
    """A planted copy of ``row``: ``light`` makes one light edit in its longer field
    (instruction or output), ``paraphrase`` rephrases both."""
    out = {"instruction": row["instruction"], "input": row.get("input", ""),
           "output": row["output"]}
    if kind == "light":
        field = "output" if len(row["output"]) >= len(row["instruction"]) else "instruction"
        out[field] = light_edit(row[field], seed)
    else:
        out["instruction"] = paraphrase(row["instruction"], seed + 1)
        out["output"] = paraphrase(row["output"], seed)
    return out


def words(row: dict) -> int:
    return len(f"{row['instruction']} {row.get('input', '')} {row['output']}".split())


# ----- the workspace: 150 real rows + planted copies ------------------------------------
@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Import 150 real Alpaca rows with 8 light edits, 6 paraphrases and 3 exact copies of
    long rows appended; embed, neighbours. Returns (workspace, {copy id: original id})."""
    rows = first_rows(DATA / "alpaca_random_9k.jsonl.gz", ORIGINALS)
    long_rows = [i for i, r in enumerate(rows) if words(r) >= LONG_WORDS]
    plants: list[tuple[int, str]] = ([(i, "light") for i in long_rows[:8]]
                                     + [(i, "paraphrase") for i in long_rows[8:14]]
                                     + [(i, "exact") for i in long_rows[14:17]])
    records = list(rows)
    truth, kinds = {}, {}
    for n, (i, kind) in enumerate(plants):
        truth[len(records)] = i
        kinds[len(records)] = kind
        records.append(dict(rows[i]) if kind == "exact" else edited_record(rows[i], kind, n))
    root = tmp_path_factory.mktemp("dedup")
    src = root / "planted.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    ws, _ = import_to_workspace([src], root / "ws")
    run_embed(ws)
    run_neighbors(ws, k=10)
    return ws, truth, kinds


def same_group(frame: pd.DataFrame, a: int, b: int) -> bool:
    g = frame.set_index("sample_id")["group"]
    return pd.notna(g[a]) and g[a] == g[b]


# ----- the detectors -----------------------------------------------------------------------
def test_normalised_words_ignore_case_spacing_and_punctuation():
    assert dedup.normalised_words("Hello,  WORLD!\tＦｕｌｌ-width") == \
        ["hello", "world", "full", "width"]
    assert dedup.word_ngrams(["a", "b"], 5) == {"a b"}
    assert dedup.word_ngrams(list("abcdef"), 5) == {"a b c d e", "b c d e f"}


def test_minhash_pairs_match_brute_force_jaccard(data_dir):
    """LSH finds the pairs a brute-force Jaccard over all pairs finds (real Dolly rows with
    light edits mixed in); every pair it reports is a true one (exact verification)."""
    base = [f"{r['instruction']} {r['output']}" for r in
            first_rows(data_dir / "alpagasus_dolly_3k.jsonl.gz", 150)]
    long = [t for t in base if len(t.split()) >= 2 * LONG_WORDS]
    texts = base + [light_edit(t, s) for s, t in enumerate(long[:30])]
    sets = [dedup.word_ngrams(dedup.normalised_words(t), 5) for t in texts]
    truth = {(i, j) for i, j in itertools.combinations(range(len(texts)), 2)
             if len(sets[i] | sets[j]) and
             len(sets[i] & sets[j]) / len(sets[i] | sets[j]) >= 0.8}
    pairs, sims = dedup.minhash_pairs(texts, 0.8)
    found = {tuple(map(int, p)) for p in pairs}
    assert found <= truth
    assert len(truth) >= 20 and len(found) >= 0.9 * len(truth)
    assert np.all(sims >= 0.8)


def test_connected_groups_chain_and_singletons():
    groups = dedup.connected_groups(6, np.array([[4, 5]]), np.array([[0, 2], [2, 3]]))
    assert groups.tolist() == [0, -1, 0, 0, 1, 1]
    keep = dedup.choose_keepers(groups, [np.array([1, 9, 5, 5, 2, 2], float)])
    assert keep.tolist() == [False, True, True, False, True, False]


# ----- the step on the planted workspace -------------------------------------------------
def test_planted_copies_are_grouped_with_their_originals(planted):
    ws, truth, kinds = planted
    frame = dedup.run_dedup(ws).value
    flags = frame.set_index("sample_id")
    for copy, original in truth.items():
        assert same_group(frame, copy, original), (kinds[copy], copy, original)
        assert flags.at[copy, "near_duplicate"] and flags.at[original, "is_keeper"]
        if kinds[copy] == "light":   # a typo can move MiniLM's cosine below 0.95
            assert flags.at[copy, "lexical"]
        if kinds[copy] == "paraphrase":
            assert flags.at[copy, "semantic"]
        if kinds[copy] == "exact":
            assert flags.at[copy, "exact"] and flags.at[copy, "max_jaccard"] == 1.0
    # precision: real Alpaca rows are rarely near-duplicates of each other
    originals = frame[frame["sample_id"] < ORIGINALS]
    stray = originals[originals["near_duplicate"]]
    assert len(stray) <= 2, stray


def test_each_detector_alone(planted):
    ws, truth, kinds = planted
    lexical = dedup.run_dedup(ws, semantic=None).value
    semantic = dedup.run_dedup(ws, minhash=None).value
    light = [c for c, k in kinds.items() if k == "light"]
    para = [c for c, k in kinds.items() if k == "paraphrase"]
    assert all(same_group(lexical, c, truth[c]) for c in light)
    assert all(same_group(semantic, c, truth[c]) for c in para)
    assert sum(same_group(semantic, c, truth[c]) for c in light) >= len(light) // 2
    # synonyms and a sentence swap break most 5-word shingles: MinHash misses paraphrases
    assert sum(same_group(lexical, c, truth[c]) for c in para) < len(para)


def test_exact_duplicates_counted_on_real_dolly(tmp_path, data_dir):
    """The Dolly file has 2 exact duplicates: dedup flags exactly the importer's
    duplicate_of rows as the exact near-duplicates, keeping the first copy."""
    ws, _ = import_to_workspace([data_dir / "alpagasus_dolly_3k.jsonl.gz"], tmp_path / "ws")
    frame = dedup.run_dedup(ws, semantic=None).value
    dup_of = ws.samples(["sample_id", "duplicate_of"]).set_index("sample_id")["duplicate_of"]
    copies = set(dup_of[dup_of.notna()].index)
    assert len(copies) == 2
    exact = frame[frame["exact"]]
    assert set(exact.loc[exact["near_duplicate"], "sample_id"]) == copies
    assert set(exact.loc[exact["is_keeper"], "sample_id"]) == {int(v) for v in
                                                               dup_of[dup_of.notna()]}


def test_keepers_follow_length_and_ifd(planted):
    ws, truth, _ = planted
    by_length = dedup.run_dedup(ws, keep_by="length").value.set_index("sample_id")
    out_len = ws.samples(["sample_id", "output"]).set_index("sample_id")["output"].str.len()
    for copy, original in truth.items():
        group = by_length.index[by_length["group"] == by_length.at[copy, "group"]]
        keeper = by_length.loc[group][by_length.loc[group, "is_keeper"]].index
        assert len(keeper) == 1
        assert out_len[keeper[0]] == out_len[group].max()
    ids = np.arange(len(ws))
    ifd = np.full(len(ws), 0.5)
    ifd[list(truth)] = 0.9          # every copy scores higher than its original ...
    first = next(iter(truth))
    ifd[first] = 1.2                # ... except one above 1, which IFD top-k drops
    ws.write_score("ifd", pd.DataFrame({"sample_id": ids, "ifd": ifd}), {"note": "test"})
    by_ifd = dedup.run_dedup(ws, keep_by="ifd").value.set_index("sample_id")
    for copy, original in truth.items():
        assert by_ifd.at[copy, "is_keeper"] == (copy != first)
        assert by_ifd.at[original, "is_keeper"] == (copy == first)


def test_recipe_filter_and_cache(planted):
    ws, truth, _ = planted
    first = dedup.run_dedup(ws)
    again = dedup.run_dedup(ws)
    assert not first.cached or again.cached
    assert again.cached
    other = dedup.run_dedup(ws, semantic=0.99)
    assert not other.cached and other.meta["params"]["semantic"] == 0.99
    frame = dedup.run_dedup(ws).value
    sel = run_selection(ws, make_recipe("threshold", min={"dedup.group_size": 1},
                                        exclude_near_duplicates=True))
    dropped = set(frame.loc[frame["near_duplicate"], "sample_id"])
    assert set(sel.sample_ids) == set(range(len(ws))) - dropped
    assert not set(truth) & set(sel.sample_ids)
    assert any(s["type"] == "exclude_near_duplicates" for s in sel.steps)


def test_explore_colours_and_group_view(planted):
    from components.groups import group_rows
    from components.map import colour_columns
    from components.state import build_explore_frame

    ws, truth, _ = planted
    frame = dedup.run_dedup(ws).value
    explore = build_explore_frame(ws)
    assert {"dedup.near_duplicate", "dedup.group_size", "dedup.max_cosine"} <= \
        set(colour_columns(explore))
    copy, original = next(iter(truth.items()))
    rows = group_rows(ws.samples(), frame, copy)
    assert rows["sample_id"].iloc[0] == original and bool(rows["keeper"].iloc[0])
    assert copy in rows["sample_id"].tolist()
    text = ws.samples().set_index("sample_id").at[copy, "output"]
    assert text in rows["output"].tolist()
    lonely = int(frame.loc[frame["group"].isna(), "sample_id"].iloc[0])
    assert group_rows(ws.samples(), frame, lonely).empty


def test_cli_dedup_and_bad_thresholds(planted, capsys):
    ws, _, _ = planted
    assert main(["dedup", "--workspace", str(ws.root), "--minhash", "0.7"]) == 0
    out = capsys.readouterr().out
    assert "near-duplicates to drop" in out and "dedup.parquet" in out
    with pytest.raises(SystemExit) as exit_info:
        main(["dedup", "--workspace", str(ws.root), "--semantic", "1.5"])
    assert exit_info.value.code == 2
    with pytest.raises(InputError):
        dedup.run_dedup(ws, keep_by="curated")   # no DS2 scores in this workspace


def test_semantic_needs_a_current_knn_graph(tmp_path, data_dir):
    ws, _ = import_to_workspace([data_dir / "alpagasus_dolly_3k.jsonl.gz"], tmp_path / "ws",
                                limit=20)
    with pytest.raises(InputError, match="kNN graph"):
        dedup.run_dedup(ws)
    assert main(["dedup", "--workspace", str(ws.root)]) == 2
    assert main(["dedup", "--workspace", str(ws.root), "--no-semantic"]) == 0


def test_explore_page_shows_the_group_and_the_eval_match(tmp_path, monkeypatch):
    """The Explore page (AppTest) on a copy of the UI fixture workspace: picking a point of a
    near-duplicate group lists the group with every member's text, literally; a row that
    overlaps the eval set shows the recorded match."""
    import shutil

    from streamlit.testing.v1 import AppTest

    from core.decontam import run_decontaminate
    from core.workspace import Workspace
    from ui_fixture import REPO, cached_fixture_workspace

    root = tmp_path / "ws"
    shutil.copytree(cached_fixture_workspace().root, root)
    ws = Workspace.open(root)
    # 300 distinct Alpaca rows hold no near-duplicates at 0.95: a loose threshold links
    # topical neighbours, enough to show a group
    frame = dedup.run_dedup(ws, semantic=0.7).value
    grouped = frame[frame["group"].notna()].sort_values(["group", "sample_id"])
    assert len(grouped) >= 2
    pick = int(grouped["sample_id"].iloc[1])
    members = grouped.loc[grouped["group"] == grouped["group"].iloc[1], "sample_id"].tolist()
    samples = ws.samples().set_index("sample_id")
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text(json.dumps({"instruction": samples.at[pick, "instruction"],
                                     "input": samples.at[pick, "input"],
                                     "output": samples.at[pick, "output"]}) + "\n")
    run_decontaminate(ws, [eval_file], cosine=None)
    monkeypatch.setenv("CHERRYPICK_WORKSPACE", str(root))
    monkeypatch.setenv("CHERRYPICK_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CHERRYPICK_DATA", str(tmp_path / "no-data"))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=90)
    at.session_state["explore_selected_ids"] = [pick]
    at.run()
    assert not at.exception, at.exception
    heads = [s.value for s in at.subheader]
    assert f"Near-duplicate group of sample #{pick} ({len(members)} rows)" in heads
    code = "\n".join(c.value for c in at.code)
    for sid in members:
        assert samples.at[sid, "output"] in code
    assert f"sample #{pick} overlaps the eval set" in [t.value for t in at.text]
    assert at.json, "the eval match is shown"
