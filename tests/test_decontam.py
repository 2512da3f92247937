"""Eval-set decontamination (core.decontam) on real rows: GSM8K train as the "eval set"
against a sample of the mixed pool that contains part of it (every GSM8K row found by the
13-gram check, other rows rarely), hand-written paraphrases of GSM8K items caught by the
embedding check but not the n-grams, the recorded match, the recipe filter, the Explore
colouring and the export refusal.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from core import decontam
from core.cli import main
from core.embed import run_embed
from core.errors import InputError
from core.export import export_all
from core.io import import_to_workspace
from core.select import make_recipe, run_selection
from real_rows import first_rows

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
GSM8K = DATA / "gsm8k_train_alpaca_format.jsonl.gz"
IN_SAMPLE = 40      # GSM8K rows in the training sample (the first 40 of the file)
EVAL_ITEMS = 80     # GSM8K items in the small eval file of the embedding check

# Hand-written rephrasings of GSM8K train items 48, 49 and 50 (in the small eval file, not
# in the training sample verbatim): same problem and numbers, other words.
HAND_PARAPHRASES = [
    ({"instruction": "Sam has memorized six digits of pi more than Carlos has. Mina has "
                     "memorized six times as many digits of pi as Carlos. Mina has memorized "
                     "24 digits of pi. How many digits of pi has Sam memorized?",
      "input": "", "output": "Carlos has memorized 24/6=4 digits of pi.\nSo Sam has "
                             "memorized 4+6=10 digits of pi."}, 48),
    ({"instruction": "Alan and his friends went on a school trip to the beach and gathered "
                     "shells. Alan gathered four times as many shells as Ben. Ben started "
                     "late and gathered just a third of what Laurie gathered. Laurie gathered "
                     "36 shells. How many shells did Alan gather?",
      "input": "", "output": "Ben gathered 36/3=12 shells\nAlan gathered 12*4=48 shells"}, 49),
    ({"instruction": "Each month Gerald spends $100 on baseball equipment. The baseball "
                     "season lasts 4 months. In the months when he is not playing, he wants "
                     "to save money by raking leaves, shoveling snow and mowing lawns, "
                     "charging $10 per job. On average, how many jobs does he need to do each "
                     "month to pay for his equipment?",
      "input": "", "output": "He has to save $400, since 4 x 100 = 400\nHe has 12 - 4 = 8 "
                             "months to earn it\nHe has to earn 400 / 8 = $50 per month\nHe "
                             "has to do 50 / 10 = 5 jobs per month"}, 50),
]


@pytest.fixture(scope="module")
def gsm_rows() -> list[dict]:
    return first_rows(GSM8K, EVAL_ITEMS)


def reword(row: dict) -> dict:
    """A rephrasing that keeps the meaning: the question's sentences in another order with
    connecting words changed, so no long word run survives, and the same answer steps."""
    import re

    swaps = {"how many": "what number of", "how much": "what amount of", "each": "every",
             "she": "the woman", "he": "the man", "if": "suppose", "then": "after that",
             "and": "as well as", "the": "this", "has": "owns", "have": "own", "is": "was",
             "does": "did", "in": "within", "of": "from"}

    def swap(text: str) -> str:
        return re.sub(r"\b(" + "|".join(map(re.escape, swaps)) + r")\b",
                      lambda m: swaps[m.group(0).lower()], text, flags=re.IGNORECASE)

    parts = re.split(r"(?<=[.?!])\s+", row["instruction"].strip())
    question = " ".join(parts[1:] + parts[:1]) if len(parts) > 1 else parts[0]
    return {"instruction": swap(question), "input": "", "output": swap(row["output"])}


@pytest.fixture(scope="module")
def contaminated(tmp_path_factory, gsm_rows):
    """Training sample: 120 Alpaca, 40 Dolly, 40 roleplay rows, GSM8K rows 0-39 verbatim,
    rule-reworded copies of GSM8K rows 40-47 and the hand-written paraphrases; eval files: all of GSM8K, and its first 80."""
    root = tmp_path_factory.mktemp("decontam")
    train = (first_rows(DATA / "alpaca_random_9k.jsonl.gz", 120)
             + first_rows(DATA / "alpagasus_dolly_3k.jsonl.gz", 40)
             + first_rows(DATA / "gpteacher_roleplay_dedupe.jsonl.gz", 40)
             + gsm_rows[:IN_SAMPLE] + [reword(r) for r in gsm_rows[40:48]]
             + [row for row, _ in HAND_PARAPHRASES])
    src = root / "train.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in train), encoding="utf-8")
    small_eval = root / "gsm8k_small.json"
    small_eval.write_text(json.dumps(gsm_rows), encoding="utf-8")   # a JSON array this time
    ws, _ = import_to_workspace([src], root / "ws")
    run_embed(ws)
    first_gsm = 200
    return ws, small_eval, first_gsm


def test_every_gsm8k_row_found_by_13_grams_others_rarely(contaminated):
    ws, _, first_gsm = contaminated
    frame = decontam.run_decontaminate(ws, [GSM8K], ngram=13, cosine=None).value
    gsm = frame["sample_id"].between(first_gsm, first_gsm + IN_SAMPLE - 1).to_numpy()
    assert frame.loc[gsm, "by_ngram"].all()
    assert (frame.loc[gsm, "ngram_coverage"] == 1.0).all()
    # the recorded match is the very item: GSM8K row i of the file
    rows = frame.loc[gsm, "eval_row"].astype(int).to_numpy()
    assert rows.tolist() == list(range(IN_SAMPLE))
    assert set(frame.loc[gsm, "eval_file"]) == {GSM8K.name}
    first = json.loads(frame.loc[gsm, "matched_ngrams"].iloc[0])
    assert len(first) == decontam.KEEP_NGRAMS and all(len(g.split()) == 13 for g in first)
    others = frame.loc[frame["sample_id"] < first_gsm]
    assert others["by_ngram"].sum() <= 2
    # the rewordings share no 13-word run with their originals
    reworded = frame["sample_id"] >= first_gsm + IN_SAMPLE
    assert frame.loc[reworded, "ngram_coverage"].max() < 0.5


def test_8_grams_and_min_coverage(contaminated):
    ws, small_eval, first_gsm = contaminated
    eight = decontam.run_decontaminate(ws, [small_eval], ngram=8, cosine=None).value
    thirteen = decontam.run_decontaminate(ws, [small_eval], ngram=13, cosine=None).value
    assert eight["by_ngram"].sum() >= thirteen["by_ngram"].sum()
    strict = decontam.run_decontaminate(ws, [small_eval], ngram=13, cosine=None,
                                        min_coverage=0.5).value
    gsm = strict["sample_id"].between(first_gsm, first_gsm + IN_SAMPLE - 1)
    assert strict.loc[gsm, "by_ngram"].all()
    assert strict.loc[~gsm, "by_ngram"].sum() == 0


def test_embedding_check_catches_rewordings(contaminated):
    ws, small_eval, first_gsm = contaminated
    frame = decontam.run_decontaminate(ws, [small_eval], ngram=13, cosine=0.9).value
    by_id = frame.set_index("sample_id")
    reworded = list(range(first_gsm + IN_SAMPLE, first_gsm + IN_SAMPLE + 8))
    hits = by_id.loc[reworded]
    assert hits["by_embedding"].sum() >= 6, hits[["eval_cosine", "nearest_eval_row"]]
    caught = hits[hits["by_embedding"]]
    assert (caught["nearest_eval_row"].to_numpy() ==
            np.array(reworded)[hits["by_embedding"].to_numpy()] - first_gsm).all()
    hand = by_id.loc[first_gsm + IN_SAMPLE + 8:]
    assert hand["by_embedding"].all(), hand[["eval_cosine", "nearest_eval_row"]]
    assert hand["nearest_eval_row"].tolist() == [item for _, item in HAND_PARAPHRASES]
    assert not hand["by_ngram"].any()
    verbatim = by_id.loc[first_gsm:first_gsm + IN_SAMPLE - 1]
    assert verbatim["by_embedding"].all() and (verbatim["eval_cosine"] > 0.99).all()
    others = by_id.loc[:first_gsm - 1]
    assert others["contaminated"].sum() <= 2


def test_filter_colouring_and_export_refusal(contaminated, tmp_path):
    from components.groups import eval_match
    from components.map import colour_columns
    from components.state import build_explore_frame

    ws, small_eval, first_gsm = contaminated
    frame = decontam.run_decontaminate(ws, [small_eval], ngram=13, cosine=None).value
    flagged = set(frame.loc[frame["contaminated"], "sample_id"])
    assert set(range(first_gsm, first_gsm + IN_SAMPLE)) <= flagged
    sel = run_selection(ws, make_recipe("threshold", min={"decontam.ngram_coverage": 0},
                                        exclude_contaminated=True))
    assert set(sel.sample_ids) == set(range(len(ws))) - flagged
    assert {"decontam.contaminated", "decontam.ngram_coverage"} <= \
        set(colour_columns(build_explore_frame(ws)))
    match = eval_match(frame, first_gsm)
    assert match["eval row (n-grams)"] == 0 and match["n-gram share of the eval item"] == 1.0
    assert eval_match(frame, 0) is None
    with pytest.raises(InputError, match="allow-contaminated"):
        export_all(ws, tmp_path / "all.jsonl")
    assert not (tmp_path / "all.jsonl").exists()
    manifest = export_all(ws, tmp_path / "all.jsonl", allow_contaminated=True)
    assert manifest["counts"]["contaminated_exported"] == len(flagged)
    clean = [i for i in range(len(ws)) if i not in flagged]
    from core.export import export_jsonl

    assert export_jsonl(ws, clean, tmp_path / "clean.jsonl")["rows"] == len(clean)


def test_cli_decontaminate(contaminated, tmp_path, capsys):
    ws, small_eval, _ = contaminated
    assert main(["decontaminate", "--workspace", str(ws.root), "--eval", str(small_eval),
                 "--no-embedding"]) == 0
    assert "overlap" in capsys.readouterr().out
    assert main(["decontaminate", "--workspace", str(ws.root), "--eval",
                 str(tmp_path / "missing.jsonl"), "--no-embedding"]) == 2
    assert "eval file not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["decontaminate", "--workspace", str(ws.root), "--eval", str(GSM8K),
              "--ngram", "5"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:      # checked by the flag's type, before work
        main(["decontaminate", "--workspace", str(ws.root), "--eval", str(GSM8K),
              "--min-coverage", "1.5"])
    assert exit_info.value.code == 2
    assert "between 0 and 1" in capsys.readouterr().err
    out = tmp_path / "x.jsonl"
    assert main(["export", "--workspace", str(ws.root), "--all", "--out", str(out)]) == 2
    assert main(["export", "--workspace", str(ws.root), "--all", "--out", str(out),
                 "--allow-contaminated"]) == 0
