"""The audit log: a person's decisions on DS2's suspected mis-ratings, one JSON line each.

``audit.jsonl`` in the workspace is append-only. Every decision is one line::

    {"time": ..., "sample_id": 17, "rating_column": "claude_ge_4_5",
     "old": 1, "suggested": 0, "new": 0, "action": "accept"}

Actions:

- ``accept``  take DS2's suggested rating (``new = suggested``);
- ``keep``    keep the raw rating (``new = old``), i.e. overrule DS2's flag;
- ``set``     a rating the person chose (``new`` given);
- ``skip``    look at it later; changes no rating;
- ``reject``  drop the sample from every selection; changes no rating;
- ``undo``    revert the previous still-standing decision for that sample and column.

Nothing is ever rewritten: an undo is a new line. The state is a fold of the log
(``fold_log``): per (sample, column) a stack of decisions, ``undo`` pops it. The rating in
force is the newest standing accept/keep/set (a later skip or reject leaves it alone); a
sample is rejected when its newest standing decision other than skip is ``reject``. The log
is the full history and survives restarts. A decision names the exact rating column (any
text: ``quality score``, ``a/b``) and is matched exactly; the name of its DS2 score file is
``core.names.ds2_score_name``, never a second spelling of the column.

Concurrency: every append takes an exclusive ``fcntl.flock`` on the log and writes the line
with one ``write`` call, so two browser tabs (or a tab and the CLI) deciding at the same time
lose nothing and never interleave bytes. This file is the one exception to "every write goes
through ``core.atomic``": an atomic rename would make concurrent appends lose lines.

Tags and bulk actions (``core.tags``) are lines of the same log with ``TAG_ACTIONS``;
``read_log`` and ``fold_log`` never see them, and a bulk reject or "send to the queue" is
ordinary decisions (one per sample) with the bulk action's id in ``bulk``.

The curated rating in force is ``curated_in_force``: the rating a person put in force when
there is one, else DS2's curated rating. Selection, export and the app all read it there.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pandas as pd

from .errors import InputError
from .workspace import AUDIT, Workspace

ACTIONS = ("accept", "keep", "set", "skip", "reject", "undo")
#: Tag lines share the log (``core.tags`` writes and folds them; decisions never see them).
TAG_ACTIONS = ("tag", "untag", "undo_bulk")
#: Actions that put a rating in force (``current_decisions`` reports them).
RATING_ACTIONS = ("accept", "keep", "set")
FIELDS = ("time", "sample_id", "rating_column", "old", "suggested", "new", "action")


class AuditLogWarning(RuntimeWarning):
    """A line of ``audit.jsonl`` that is not a valid decision was skipped (the message names
    the file and the line); the CLI prints it as one ``warning:`` line, the app shows it."""


def audit_path(ws: Workspace) -> Path:
    return ws.path(AUDIT)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _plain(value):
    """JSON-native form of a rating (numpy ints/floats, NaN → None)."""
    if value is None:
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float):
        if value != value:  # NaN
            return None
        if value.is_integer():
            return int(value)
    return value


@contextlib.contextmanager
def _locked(ws: Workspace, mode: str) -> Iterator:
    """Open the log and hold an exclusive lock on it for the duration of the block."""
    path = audit_path(ws)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, mode, encoding="utf-8") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield fh
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _write_line(fh, entry: dict) -> None:
    _write_lines(fh, [entry])


def _write_lines(fh, entries: list[dict]) -> None:
    """Append ``entries`` with one ``write`` call (a bulk action lands whole or not at all
    but for a crash mid-write, which the reader skips line by line)."""
    fh.seek(0, os.SEEK_END)
    line = "".join(json.dumps(entry, ensure_ascii=False) + "\n" for entry in entries)
    if fh.tell() and not _ends_with_newline(fh.name):
        line = "\n" + line  # after a cut-off last line (a crash mid-append): keep it apart
    fh.write(line)
    fh.flush()
    os.fsync(fh.fileno())


def _ends_with_newline(path) -> bool:
    """Whether the (non-empty) file ends its last line."""
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\n"


def make_decision(sample_id: int, rating_column: str, action: str, *, old=None,
                  suggested=None, new=None) -> dict:
    """Validate a decision and fill ``new`` from the action (accept → suggested, keep → old)."""
    if action not in ACTIONS:
        raise InputError(f"unknown audit action {action!r}; use one of {', '.join(ACTIONS)}",
                         field="action")
    if not rating_column:
        raise InputError("an audit decision needs the rating column it applies to",
                         field="rating_column")
    old, suggested, new = _plain(old), _plain(suggested), _plain(new)
    if action == "accept":
        if suggested is None:
            raise InputError("accept needs the suggested rating", field="suggested")
        new = suggested
    elif action == "keep":
        if old is None:
            raise InputError("keep needs the raw rating", field="old")
        new = old
    elif action == "set":
        if new is None:
            raise InputError("set needs the new rating", field="new")
    elif action in ("skip", "reject"):
        new = None
    entry = {"time": _now(), "sample_id": int(sample_id), "rating_column": str(rating_column),
             "old": old, "suggested": suggested, "new": new, "action": action}
    why = entry_problem(entry)  # never write a line the reader would skip
    if why is not None:
        raise InputError(f"not a valid audit decision: {why}")
    return entry


def append_decision(ws: Workspace, sample_id: int, rating_column: str, action: str, *,
                    old=None, suggested=None, new=None) -> dict:
    """Append one decision to ``audit.jsonl`` (locked, one write) and return it.

    For ``undo`` prefer ``undo_last``, which records what was undone.
    """
    entry = make_decision(sample_id, rating_column, action, old=old, suggested=suggested,
                          new=new)
    with _locked(ws, "a") as fh:
        _write_line(fh, entry)
    return entry


def _is_rating(value) -> bool:
    """A rating in a decision: a finite number (not a boolean) or null."""
    if value is None:
        return True
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def entry_problem(entry) -> str | None:
    """Why a parsed log line is not a decision ``make_decision`` could have written, or None.
    Nothing is coerced: ``"sample_id": "3"`` or an unknown action is a problem, not a 3."""
    if not isinstance(entry, dict):
        return f"not a JSON object but {type(entry).__name__}"
    action = entry.get("action")
    if action in TAG_ACTIONS:
        from .tags import tag_line_problem

        return tag_line_problem(entry)
    if action not in ACTIONS:
        return f"unknown action {action!r}"
    sid = entry.get("sample_id")
    if isinstance(sid, bool) or not isinstance(sid, int) or sid < 0:
        return f"sample_id {sid!r} is not a sample id (a whole number ≥ 0)"
    column = entry.get("rating_column")
    if not isinstance(column, str) or not column:
        return f"rating_column {column!r} is not a column name"
    for key in ("old", "suggested", "new"):
        if not _is_rating(entry.get(key)):
            return f"{key} {entry.get(key)!r} is not a rating (a number or null)"
    if action in RATING_ACTIONS and entry.get("new") is None:
        return f"a {action} without its new rating"
    return None


def _parse(data: bytes, source: str, problems: list[str] | None = None,
           kind: str = "decision") -> list[dict]:
    """Decisions from the log's bytes. A line that is not a valid decision (not UTF-8, not
    JSON, a cut-off last line after a crash mid-append, a hand edit) is skipped with an
    ``AuditLogWarning`` naming the line, and its message is appended to ``problems``: the
    other decisions still count, and the bad line is never read as something else. Lines
    end at a newline byte only (a rating column may hold U+2028, which ``splitlines`` would
    cut). ``kind``: ``decision`` (per-sample decisions), ``tag`` (``TAG_ACTIONS`` lines) or
    ``all``; lines of the other kind are valid but left out."""
    entries, skipped = [], []
    lines = data.split(b"\n")
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for number, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            entry = json.loads(raw.decode("utf-8"))
            why = entry_problem(entry)
        except UnicodeDecodeError:
            why = "not valid UTF-8"
        except (ValueError, RecursionError) as err:
            why = ("a cut-off last line (a crash while writing it?)" if number == last else
                   f"not valid JSON ({' '.join(str(err).split())[:120]})")
        if why is None:
            if kind == "all" or (entry["action"] in TAG_ACTIONS) == (kind == "tag"):
                entries.append(entry)
        else:
            skipped.append(f"{source}, line {number + 1}: skipped, {why}; fix or delete "
                           "that line by hand")
    for message in skipped:
        warnings.warn(message, AuditLogWarning, stacklevel=3)
    if problems is not None:
        problems.extend(skipped)
    return entries


def read_log(ws: Workspace, problems: list[str] | None = None) -> list[dict]:
    """Every decision in the order it was made. Lines that are not valid decisions are
    skipped with a warning naming the line (also appended to ``problems``, for the app)."""
    path = audit_path(ws)
    if not path.exists():
        return []
    try:
        data = path.read_bytes()
    except OSError as err:
        raise InputError(f"cannot read the audit log ({type(err).__name__}: {err})",
                         file=str(path)) from None
    return _parse(data, str(path), problems)


def log_frame(ws: Workspace | list[dict], rating_column: str | None = None) -> pd.DataFrame:
    """The log (or entries already read) as a frame for tables; optionally one rating
    column only."""
    entries = read_log(ws) if isinstance(ws, Workspace) else ws
    frame = pd.DataFrame(entries, columns=list(FIELDS))
    if rating_column is not None:
        keep = frame["rating_column"] == rating_column
        frame = frame[keep].reset_index(drop=True)
    return frame


@dataclass
class AuditState:
    """The fold of a log: per (sample_id, rating column) the stack of standing decisions,
    each as (line index, entry), oldest first."""

    stacks: dict = field(default_factory=dict)

    def stack(self, sample_id: int, rating_column: str) -> list:
        return self.stacks.get((int(sample_id), rating_column), [])

    def in_force(self, sample_id: int, rating_column: str) -> dict | None:
        """The newest standing decision other than ``skip`` (a skip changes nothing)."""
        for _, entry in reversed(self.stack(sample_id, rating_column)):
            if entry["action"] != "skip":
                return entry
        return None

    def rating(self, sample_id: int, rating_column: str):
        """The newest standing accept/keep/set rating, or None."""
        for _, entry in reversed(self.stack(sample_id, rating_column)):
            if entry["action"] in RATING_ACTIONS:
                return entry["new"]
        return None

    def status(self, sample_id: int, rating_column: str) -> str:
        """``open`` (never looked at), ``skip`` (only skipped) or the action in force."""
        stack = self.stack(sample_id, rating_column)
        decided = self.in_force(sample_id, rating_column)
        return decided["action"] if decided else ("skip" if stack else "open")

    def samples(self, rating_column: str) -> list[int]:
        return [sid for (sid, column), stack in self.stacks.items()
                if column == rating_column and stack]

    def latest(self, rating_column: str, sample_id: int | None = None) -> dict | None:
        """The most recent standing decision in ``rating_column`` (or for one sample)."""
        best = None
        for (sid, column), stack in self.stacks.items():
            if column != rating_column or not stack:
                continue
            if sample_id is not None and sid != int(sample_id):
                continue
            if best is None or stack[-1][0] > best[0]:
                best = stack[-1]
        return None if best is None else best[1]


def fold_log(entries: list[dict]) -> AuditState:
    """Replay decisions in order; ``undo`` pops the last standing one for its sample/column
    (an undo with nothing to undo is ignored)."""
    state = AuditState()
    for index, entry in enumerate(entries):
        key = (int(entry["sample_id"]), entry["rating_column"])
        stack = state.stacks.setdefault(key, [])
        if entry["action"] == "undo":
            if stack:
                stack.pop()
        else:
            stack.append((index, entry))
    return state


def audit_state(ws: Workspace) -> AuditState:
    return fold_log(read_log(ws))


def current_decisions(ws: Workspace, rating_column: str) -> dict[int, object]:
    """sample_id → the rating a person put in force for ``rating_column``: the newest
    standing accept/keep/set (a later skip or reject does not change it; an undo does).

    Samples absent here keep DS2's curated rating. Rejections are read with
    ``rejected_ids``.
    """
    return ratings_in_force(audit_state(ws), rating_column)


def ratings_in_force(state: AuditState, rating_column: str) -> dict[int, object]:
    """``current_decisions`` from an already folded log."""
    out = {}
    for sid in state.samples(rating_column):
        rating = state.rating(sid, rating_column)
        if rating is not None:
            out[sid] = rating
    return dict(sorted(out.items()))


def curated_in_force(curated: pd.Series, log: AuditState | Iterable[dict],
                     rating_column: str) -> pd.Series:
    """THE curated rating: DS2's ``curated`` (indexed by sample_id) with the rating a person
    put in force for ``rating_column`` (``ratings_in_force``) on top, as float64 (NaN:
    missing, DS2's class -1 for an unrated sample included). ``log`` is the folded log or its
    entries; decisions on samples not in ``curated`` are ignored, and ``curated`` is left as
    it was."""
    state = log if isinstance(log, AuditState) else fold_log(list(log))
    values = pd.to_numeric(curated, errors="coerce").astype("Float64").to_numpy(
        dtype="float64", na_value=float("nan"))
    with np.errstate(invalid="ignore"):
        values[values < 0] = float("nan")
    out = pd.Series(values, index=curated.index, name=curated.name)
    hand = {sid: rating for sid, rating in ratings_in_force(state, rating_column).items()
            if sid in out.index}
    if hand:
        out.loc[list(hand)] = [float(rating) for rating in hand.values()]
    return out


def rejected_ids(ws: Workspace, rating_column: str | None = None) -> set[int]:
    """Samples whose newest standing decision other than skip, over every rating column
    (or one), is ``reject``: selections that exclude rejected rows leave them out."""
    return rejected_in(audit_state(ws), rating_column)


def rejected_in(state: AuditState, rating_column: str | None = None) -> set[int]:
    """``rejected_ids`` from an already folded log (``fold_log(entries)``)."""
    newest: dict[int, tuple[int, str]] = {}
    for (sid, column), stack in state.stacks.items():
        if rating_column is not None and column != rating_column:
            continue
        for index, entry in reversed(stack):
            if entry["action"] != "skip":
                if sid not in newest or index > newest[sid][0]:
                    newest[sid] = (index, entry["action"])
                break
    return {sid for sid, (_, action) in newest.items() if action == "reject"}


def decided_ids(ws: Workspace, rating_column: str) -> set[int]:
    """Samples with a standing decision other than ``skip`` (what "audited" counts)."""
    state = audit_state(ws)
    return {sid for sid in state.samples(rating_column)
            if state.in_force(sid, rating_column) is not None}


def undo_last(ws: Workspace, rating_column: str, sample_id: int | None = None) -> dict | None:
    """Undo the most recent standing decision in ``rating_column`` (or for ``sample_id``).

    Reads and appends under one lock, so two tabs undoing at once undo two different
    decisions. Returns the decision that was undone, or None when there was nothing to undo
    (then nothing is written). The undo line records ``old`` = the undone decision's rating
    and ``new`` = the rating in force afterwards (None: DS2's curated rating applies again).
    """
    with _locked(ws, "a+") as fh:
        entries = _parse(audit_path(ws).read_bytes(), str(audit_path(ws)))
        state = fold_log(entries)
        target = state.latest(rating_column, sample_id)
        if target is None:
            return None
        sid = int(target["sample_id"])
        state.stacks[(sid, rating_column)].pop()
        entry = {"time": _now(), "sample_id": sid, "rating_column": target["rating_column"],
                 "old": target["new"], "suggested": target.get("suggested"),
                 "new": state.rating(sid, rating_column), "action": "undo"}
        _write_line(fh, entry)
    return target


# ---------------------------------------------------------------------------------------
# the audit queue (what the app shows next)
# ---------------------------------------------------------------------------------------
QUEUE_COLUMNS = ("sample_id", "rating_class", "suggested", "confidence", "noisy_avg",
                 "cluster", "status", "decided")


def audit_queue(ds2: pd.DataFrame, state: AuditState, rating_column: str,
                clusters: pd.Series | None = None, transition: tuple[int, int] | None = None,
                cluster: int | None = None, include_decided: bool = False) -> pd.DataFrame:
    """DS2's flagged samples in the order a person should look at them.

    ``ds2`` is a ``scores/ds2_<column>.parquet`` frame; ``clusters`` maps sample_id → cluster.
    Open samples come first, highest confidence first (ties: smaller sample id); skipped
    ones follow in the order they were skipped; decided ones (accept/keep/set/reject) only
    with ``include_decided``, last, in the order they were decided.
    Samples a person sent to the queue (``core.tags.bulk_decide``: a ``skip`` carrying a
    ``bulk`` id) are listed too, flagged or not, and stay listed once decided.
    ``transition=(rated, suggested)`` and ``cluster`` filter. ``status`` is ``open``,
    ``skip`` or the action in force; ``decided`` is the rating in force from the log.
    """
    sent = [sid for (sid, column), stack in state.stacks.items() if column == rating_column
            and any(e["action"] == "skip" and "bulk" in e for _, e in stack)]
    flagged = ds2[ds2["flagged"].astype(bool) | ds2["sample_id"].isin(sent)]
    if transition is not None:
        rated, suggested = transition
        flagged = flagged[(flagged["rating_class"] == rated) &
                          (flagged["suggested"] == suggested)]
    queue = flagged[["sample_id", "rating_class", "suggested", "confidence",
                     "noisy_avg"]].copy()
    queue["cluster"] = (queue["sample_id"].map(clusters) if clusters is not None
                        else pd.Series(pd.NA, index=queue.index)).astype("Int64")
    if cluster is not None:
        queue = queue[queue["cluster"] == cluster]
    ids = queue["sample_id"].astype(int).tolist()
    queue["status"] = [state.status(sid, rating_column) for sid in ids]
    queue["decided"] = pd.array([state.rating(sid, rating_column) for sid in ids],
                                dtype="Int64")
    group = queue["status"].map(lambda s: 0 if s == "open" else 1 if s == "skip" else 2)
    last_line = [max((i for i, _ in state.stack(sid, rating_column)), default=-1)
                 for sid in ids]
    queue = queue.assign(_group=group, _line=last_line,
                         _conf=-queue["confidence"].astype("float64").fillna(-1.0))
    if not include_decided:
        queue = queue[queue["_group"] < 2]
    queue = queue.sort_values(["_group", "_line", "_conf", "sample_id"], kind="stable")
    return queue[list(QUEUE_COLUMNS)].reset_index(drop=True)


def audit_progress(ds2: pd.DataFrame, state: AuditState, rating_column: str) -> tuple[int, int]:
    """(audited, flagged): flagged samples with a standing decision other than skip."""
    flagged_ids = ds2.loc[ds2["flagged"].astype(bool), "sample_id"].astype(int)
    done = sum(1 for sid in flagged_ids if state.in_force(sid, rating_column) is not None)
    return done, int(len(flagged_ids))
