"""The audit log (core/audit.py): append, read, fold, undo, and concurrent appends."""

from __future__ import annotations

import json
import multiprocessing as mp
import random

import pandas as pd
import pytest

from core.audit import (ACTIONS, AuditLogWarning, append_decision, audit_path, audit_progress,
                        audit_queue, audit_state, curated_in_force, current_decisions,
                        decided_ids, log_frame, read_log, rejected_ids, undo_last)
from core.errors import InputError
from core.workspace import Workspace

COL = "claude_ge_4_5"


@pytest.fixture()
def ws(tmp_path) -> Workspace:
    return Workspace(tmp_path)


def reference_fold(lines: list[dict], column: str | None) -> tuple[dict, set]:
    """Plain reference: mark undone lines, then per sample take the newest surviving rating
    action (ratings) and the newest surviving non-skip action (rejections)."""
    undone = set()
    for i, line in enumerate(lines):
        if line["action"] != "undo":
            continue
        for j in range(i - 1, -1, -1):
            other = lines[j]
            if (j not in undone and other["action"] != "undo"
                    and other["sample_id"] == line["sample_id"]
                    and other["rating_column"] == line["rating_column"]):
                undone.add(j)
                break
    alive = [(i, line) for i, line in enumerate(lines)
             if i not in undone and line["action"] != "undo"]
    ratings = {}
    for i, line in alive:
        if line["rating_column"] == column and line["action"] in ("accept", "keep", "set"):
            ratings[line["sample_id"]] = line["new"]
    newest = {}
    for i, line in alive:
        if (column is None or line["rating_column"] == column) and line["action"] != "skip":
            newest[line["sample_id"]] = line["action"]
    return ratings, {sid for sid, action in newest.items() if action == "reject"}


def test_append_writes_one_json_line_per_decision_with_the_contract_fields(ws):
    append_decision(ws, 3, COL, "accept", old=1, suggested=0)
    append_decision(ws, 4, COL, "keep", old=1, suggested=0)
    append_decision(ws, 5, COL, "set", old=0, suggested=1, new=1)
    lines = audit_path(ws).read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3
    rows = [json.loads(line) for line in lines]
    assert all(set(r) == {"time", "sample_id", "rating_column", "old", "suggested", "new",
                          "action"} for r in rows)
    assert [(r["sample_id"], r["action"], r["new"]) for r in rows] == [
        (3, "accept", 0), (4, "keep", 1), (5, "set", 1)]
    assert read_log(ws) == rows
    assert list(log_frame(ws)["sample_id"]) == [3, 4, 5]


def test_numpy_values_are_stored_as_plain_json(ws):
    import numpy as np

    append_decision(ws, np.int64(7), COL, "accept", old=np.int64(1), suggested=np.float64(0.0))
    row = json.loads(audit_path(ws).read_text().strip())
    assert row["sample_id"] == 7 and row["old"] == 1 and row["new"] == 0
    assert isinstance(row["new"], int)


def test_fold_last_decision_wins_and_skip_reject_change_no_rating(ws):
    append_decision(ws, 1, COL, "accept", old=1, suggested=0)
    append_decision(ws, 1, COL, "set", old=1, suggested=0, new=1)
    append_decision(ws, 2, COL, "skip", old=0, suggested=1)
    append_decision(ws, 3, COL, "reject", old=0, suggested=1)
    append_decision(ws, 4, "other_rating", "accept", old=5, suggested=2)
    append_decision(ws, 6, COL, "accept", old=1, suggested=0)
    append_decision(ws, 6, COL, "skip", old=1, suggested=0)     # a later skip keeps the 0
    assert current_decisions(ws, COL) == {1: 1, 6: 0}
    assert current_decisions(ws, "other_rating") == {4: 2}
    # decisions match the exact column: a DS2 score name is another name, not an alias
    assert current_decisions(ws, "ds2_other_rating") == {}
    assert rejected_ids(ws) == {3}
    assert rejected_ids(ws, "other_rating") == set()
    assert decided_ids(ws, COL) == {1, 3, 6}


def test_undo_reverts_the_previous_decision_of_that_sample(ws):
    append_decision(ws, 1, COL, "accept", old=1, suggested=0)
    append_decision(ws, 1, COL, "set", old=1, suggested=0, new=1)
    undone = undo_last(ws, COL, sample_id=1)
    assert undone["action"] == "set"
    assert current_decisions(ws, COL) == {1: 0}
    last = read_log(ws)[-1]
    assert last["action"] == "undo" and last["old"] == 1 and last["new"] == 0
    undo_last(ws, COL, sample_id=1)
    assert current_decisions(ws, COL) == {}
    assert read_log(ws)[-1]["new"] is None
    lines_before = len(read_log(ws))
    assert undo_last(ws, COL, sample_id=1) is None
    assert len(read_log(ws)) == lines_before  # nothing to undo: nothing written


def test_undo_without_sample_undoes_the_newest_standing_decision_of_the_column(ws):
    append_decision(ws, 1, COL, "accept", old=1, suggested=0)   # A1
    append_decision(ws, 2, COL, "keep", old=1, suggested=0)     # B
    append_decision(ws, 1, COL, "set", old=1, suggested=0, new=1)  # A2
    append_decision(ws, 9, "other_rating", "accept", old=3, suggested=1)
    assert undo_last(ws, COL)["sample_id"] == 1                 # A2
    assert current_decisions(ws, COL) == {1: 0, 2: 1}
    assert undo_last(ws, COL)["sample_id"] == 2                 # B is newer than A1
    assert current_decisions(ws, COL) == {1: 0}
    assert current_decisions(ws, "other_rating") == {9: 1}


def test_reject_then_undo_restores_the_sample(ws):
    append_decision(ws, 5, COL, "reject", old=1, suggested=0)
    assert rejected_ids(ws) == {5}
    undo_last(ws, COL)
    assert rejected_ids(ws) == set()


def test_random_histories_match_a_plain_reference_fold(ws):
    rng = random.Random(0)
    for _ in range(300):
        sid = rng.randrange(8)
        column = rng.choice([COL, "other"])
        action = rng.choice(["accept", "keep", "set", "skip", "reject", "undo", "undo"])
        if action == "undo":
            undo_last(ws, column, sample_id=sid if rng.random() < 0.5 else None)
        else:
            append_decision(ws, sid, column, action, old=rng.randrange(3),
                            suggested=rng.randrange(3), new=rng.randrange(3))
    lines = read_log(ws)
    for column in (COL, "other"):
        ratings, rejected = reference_fold(lines, column)
        assert current_decisions(ws, column) == ratings
        assert rejected_ids(ws, column) == rejected
    assert rejected_ids(ws) == reference_fold(lines, None)[1]


def test_log_survives_a_restart_and_a_cut_off_last_line(tmp_path):
    append_decision(Workspace(tmp_path), 1, COL, "accept", old=1, suggested=0)
    with open(tmp_path / "audit.jsonl", "a", encoding="utf-8") as fh:
        fh.write('{"time": "2026-01-01T00:00:00Z", "sample_id": 2, "rat')  # killed mid-write
    with pytest.warns(RuntimeWarning, match="cut-off"):
        assert current_decisions(Workspace(tmp_path), COL) == {1: 0}


def test_a_broken_line_inside_the_log_is_skipped_with_a_warning_naming_it(tmp_path):
    """Issue 13: a malformed line is skipped with a warning naming it, never a crash (the
    cases of malformed lines are in tests/test_harden_inputs.py)."""
    ws = Workspace(tmp_path)
    append_decision(ws, 1, COL, "accept", old=1, suggested=0)
    with open(tmp_path / "audit.jsonl", "a", encoding="utf-8") as fh:
        fh.write("not json\n")
    append_decision(ws, 2, COL, "accept", old=1, suggested=0)
    with pytest.warns(AuditLogWarning, match="line 2: skipped, not valid JSON"):
        assert [e["sample_id"] for e in read_log(ws)] == [1, 2]


def test_bad_decisions_are_refused(ws):
    with pytest.raises(InputError, match="unknown audit action"):
        append_decision(ws, 1, COL, "approve", old=1, suggested=0)
    with pytest.raises(InputError, match="suggested"):
        append_decision(ws, 1, COL, "accept", old=1)
    with pytest.raises(InputError, match="new rating"):
        append_decision(ws, 1, COL, "set", old=1)
    assert not audit_path(ws).exists() or read_log(ws) == []
    assert set(ACTIONS) == {"accept", "keep", "set", "skip", "reject", "undo"}


def test_curated_in_force_overrides_only_decided_samples():
    curated = pd.Series([0, 1, 1, 0], index=[10, 11, 12, 13])
    decisions = [{"sample_id": sid, "rating_column": COL, "new": new, "action": "set"}
                 for sid, new in {11: 0, 13: 1, 99: 1}.items()]
    out = curated_in_force(curated, decisions, COL)
    assert out.to_dict() == {10: 0, 11: 0, 12: 1, 13: 1}
    assert curated.to_dict() == {10: 0, 11: 1, 12: 1, 13: 0}  # input untouched


def ds2_frame() -> pd.DataFrame:
    return pd.DataFrame({
        "sample_id": [0, 1, 2, 3, 4, 5],
        "rating_class": [1, 1, 0, 1, 0, 1],
        "flagged": [True, True, True, False, True, True],
        "noisy_avg": [0.9, 0.8, 0.7, 0.1, 0.6, 0.95],
        "suggested": [0, 0, 1, 1, 1, 0],
        "confidence": [0.5, 0.9, 0.7, 0.0, 0.7, 0.2],
        "curated": [1, 0, 1, 1, 1, 1]})


def test_queue_orders_open_by_confidence_then_skipped_and_filters(ws):
    ds2 = ds2_frame()
    clusters = pd.Series({0: 3, 1: 3, 2: 4, 3: 4, 4: 3, 5: 4})
    state = audit_state(ws)
    queue = audit_queue(ds2, state, COL, clusters)
    # flagged only; confidence descending, equal confidence → smaller id first
    assert queue["sample_id"].tolist() == [1, 2, 4, 0, 5]
    append_decision(ws, 1, COL, "skip", old=1, suggested=0)
    append_decision(ws, 2, COL, "accept", old=0, suggested=1)
    append_decision(ws, 4, COL, "skip", old=0, suggested=1)
    state = audit_state(ws)
    queue = audit_queue(ds2, state, COL, clusters)
    assert queue["sample_id"].tolist() == [0, 5, 1, 4]
    assert queue["status"].tolist() == ["open", "open", "skip", "skip"]
    full = audit_queue(ds2, state, COL, clusters, include_decided=True)
    assert full["sample_id"].tolist()[-1] == 2 and full["decided"].tolist()[-1] == 1
    rated1_to_0 = audit_queue(ds2, state, COL, clusters, transition=(1, 0))
    assert sorted(rated1_to_0["sample_id"]) == [0, 1, 5]
    in_cluster_4 = audit_queue(ds2, state, COL, clusters, cluster=4, include_decided=True)
    assert sorted(in_cluster_4["sample_id"]) == [2, 5]
    assert audit_progress(ds2, state, COL) == (1, 5)


def _writer(root: str, worker: int, count: int, start) -> None:
    ws = Workspace(root)
    start.wait()
    for i in range(count):
        append_decision(ws, worker * 10_000 + i, COL, "set", old=0, suggested=1, new=worker)


def test_two_processes_appending_at_once_lose_nothing(tmp_path):
    ctx = mp.get_context("fork")
    start = ctx.Event()
    workers = [ctx.Process(target=_writer, args=(str(tmp_path), w, 200, start))
               for w in (1, 2)]
    for p in workers:
        p.start()
    start.set()
    for p in workers:
        p.join(60)
        assert p.exitcode == 0
    lines = (tmp_path / "audit.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 400
    rows = [json.loads(line) for line in lines]  # every line is valid JSON
    ids = {r["sample_id"] for r in rows}
    assert ids == {w * 10_000 + i for w in (1, 2) for i in range(200)}
    decisions = current_decisions(Workspace(tmp_path), COL)
    assert len(decisions) == 400
    assert all(decisions[sid] == sid // 10_000 for sid in decisions)
