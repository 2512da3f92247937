"""Tags and bulk actions: a person's labels on many samples at once, kept in the audit log.

Tags live in ``audit.jsonl`` next to the audit decisions (``core.audit``), append-only like
them. One bulk action is one line with many ids::

    {"time": ..., "action": "tag", "tag": "math", "sample_ids": [3, 17], "action_id": "b-..."}
    {"time": ..., "action": "untag", "tag": "math", "sample_ids": [17], "action_id": "b-..."}
    {"time": ..., "action": "undo_bulk", "undoes": "b-...", "action_id": "b-..."}

Bulk reject and "send to the audit queue" are ordinary audit decisions (``reject`` and
``skip``, one line per sample, as ``core.audit.fold_log`` reads them) carrying the bulk
action's id in ``bulk``; undoing such an action appends one ``undo`` decision per sample
whose standing decision is still that action's, then the ``undo_bulk`` marker. Nothing is
rewritten. ``tags_in_force`` folds the tag lines: a tag adds, an untag removes, an undone
action counts as never made. Tag names follow ``core.paths.check_name`` (they are data, and
a strict rule keeps them printable and unambiguous in a recipe or an export).
"""

from __future__ import annotations

import uuid
from typing import Iterable

import numpy as np
import pandas as pd

from .audit import (TAG_ACTIONS, _locked, _now, _parse, _write_lines, audit_path,
                    fold_log, make_decision)
from .errors import InputError
from .paths import check_name, is_valid_name
from .workspace import Workspace

TAGS_FIELD = "tags"  # the export field (``export --with-tags``)
#: bulk decisions: what the bar calls them → the audit action written per sample
BULK_DECISIONS = {"reject": "reject", "queue": "skip"}


def _is_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def tag_line_problem(entry: dict) -> str | None:
    """Why a parsed ``TAG_ACTIONS`` line is not one ``core.tags`` could have written, or None
    (``core.audit.entry_problem`` asks here; nothing is coerced)."""
    action = entry.get("action")
    if not isinstance(entry.get("action_id"), str) or not entry["action_id"]:
        return f"a {action} line without its action_id"
    if action == "undo_bulk":
        undoes = entry.get("undoes")
        return None if isinstance(undoes, str) and undoes else "undo_bulk without `undoes`"
    if not is_valid_name(entry.get("tag")):
        return f"tag {entry.get('tag')!r} is not a tag name"
    ids = entry.get("sample_ids")
    if not isinstance(ids, list) or not ids or not all(_is_id(i) for i in ids):
        return "sample_ids is not a non-empty list of sample ids (whole numbers ≥ 0)"
    return None


def check_tag(name: object) -> str:
    return check_name(name, "tag name")


def _new_id() -> str:
    return f"b-{uuid.uuid4().hex[:12]}"


def _check_ids(ws: Workspace, sample_ids: Iterable) -> list[int]:
    """The ids as a sorted unique list, each a sample of ``ws``; none is an error."""
    n = len(ws)
    out = set()
    for value in sample_ids:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise InputError(f"sample id {value!r} is not a whole number", field="sample_ids")
        if not 0 <= int(value) < n:
            raise InputError(f"sample id {int(value)} is not in the workspace (ids 0.."
                             f"{n - 1})", field="sample_ids")
        out.add(int(value))
    if not out:
        raise InputError("no samples to act on (select points, search, or pass ids)",
                         field="sample_ids")
    return sorted(out)


def tag_samples(ws: Workspace, tag: str, sample_ids: Iterable, untag: bool = False) -> dict:
    """Append one ``tag`` (or ``untag``) line for ``sample_ids`` and return it."""
    entry = {"time": _now(), "action": "untag" if untag else "tag", "tag": check_tag(tag),
             "sample_ids": _check_ids(ws, sample_ids), "action_id": _new_id()}
    with _locked(ws, "a") as fh:
        _write_lines(fh, [entry])
    return entry


def bulk_decide(ws: Workspace, what: str, sample_ids: Iterable, rating_column: str) -> dict:
    """Reject ``sample_ids`` (``what="reject"``) or send them to the audit queue of
    ``rating_column`` (``what="queue"``: a ``skip``, "look at it later"), one audit decision
    per sample under one lock and one write. Returns a summary with the action id."""
    if what not in BULK_DECISIONS:
        raise InputError(f"unknown bulk action {what!r}; use one of "
                         f"{', '.join(BULK_DECISIONS)}", field="action")
    ids = _check_ids(ws, sample_ids)
    action_id = _new_id()
    lines = []
    for sid in ids:
        entry = make_decision(sid, rating_column, BULK_DECISIONS[what])
        entry["bulk"] = action_id
        lines.append(entry)
    with _locked(ws, "a") as fh:
        _write_lines(fh, lines)
    return {"action": what, "rating_column": rating_column, "sample_ids": ids,
            "action_id": action_id}


def _bulk_actions(entries: list[dict]) -> list[dict]:
    """Bulk actions still standing, oldest first: each ``{"action_id", "action", "tag" or
    "rating_column", "sample_ids"}``."""
    undone = {e["undoes"] for e in entries if e["action"] == "undo_bulk"}
    actions: dict[str, dict] = {}
    for entry in entries:
        if entry["action"] in ("tag", "untag"):
            actions[entry["action_id"]] = {"action_id": entry["action_id"],
                                           "action": entry["action"], "tag": entry["tag"],
                                           "sample_ids": list(entry["sample_ids"])}
        elif isinstance(entry.get("bulk"), str) and entry["action"] in ("reject", "skip"):
            found = actions.setdefault(entry["bulk"], {
                "action_id": entry["bulk"], "rating_column": entry["rating_column"],
                "action": "reject" if entry["action"] == "reject" else "queue",
                "sample_ids": []})
            found["sample_ids"].append(int(entry["sample_id"]))
    return [a for a in actions.values() if a["action_id"] not in undone]


def bulk_history(ws: Workspace) -> list[dict]:
    """The standing bulk actions in ``ws``, oldest first (for the app's "Undo last")."""
    return _bulk_actions(_read_all(ws))


def _read_all(ws: Workspace) -> list[dict]:
    path = audit_path(ws)
    return _parse(path.read_bytes(), str(path), kind="all") if path.exists() else []


def undo_bulk(ws: Workspace, tag: str | None = None) -> dict | None:
    """Undo the most recent standing bulk action (of ``tag`` only, when given); None when
    there is none (nothing is written). Reads and appends under one lock, so two tabs
    undoing at once undo two different actions."""
    if tag is not None:
        check_tag(tag)
    with _locked(ws, "a+") as fh:
        entries = _read_all(ws)
        standing = [a for a in _bulk_actions(entries) if tag is None or a.get("tag") == tag]
        if not standing:
            return None
        target = standing[-1]
        lines = []
        if "rating_column" in target:
            column = target["rating_column"]
            state = fold_log([e for e in entries if e["action"] not in TAG_ACTIONS])
            for sid in target["sample_ids"]:
                stack = state.stack(sid, column)
                if stack and stack[-1][1].get("bulk") == target["action_id"]:
                    undone = stack.pop()[1]
                    lines.append({"time": _now(), "sample_id": sid, "rating_column": column,
                                  "old": undone["new"], "suggested": undone.get("suggested"),
                                  "new": state.rating(sid, column), "action": "undo"})
        lines.append({"time": _now(), "action": "undo_bulk", "undoes": target["action_id"],
                      "action_id": _new_id()})
        _write_lines(fh, lines)
    return target


def fold_tags(entries: list[dict]) -> dict[str, set[int]]:
    """tag → the sample ids carrying it, from the log's tag lines (undone actions left out)."""
    undone = {e["undoes"] for e in entries if e["action"] == "undo_bulk"}
    tags: dict[str, set[int]] = {}
    for entry in entries:
        if entry["action"] not in ("tag", "untag") or entry["action_id"] in undone:
            continue
        ids = tags.setdefault(entry["tag"], set())
        if entry["action"] == "tag":
            ids.update(entry["sample_ids"])
        else:
            ids.difference_update(entry["sample_ids"])
    return {name: ids for name, ids in sorted(tags.items()) if ids}


def tag_sets(ws: Workspace, problems: list[str] | None = None) -> dict[str, set[int]]:
    """``fold_tags`` of the workspace's log."""
    path = audit_path(ws)
    if not path.exists():
        return {}
    return fold_tags(_parse(path.read_bytes(), str(path), problems, kind="tag"))


def tags_in_force(ws: Workspace) -> pd.DataFrame:
    """``sample_id`` and ``tags`` (sorted list of names) of every tagged sample, by id."""
    per_sample: dict[int, list[str]] = {}
    for name, ids in tag_sets(ws).items():
        for sid in ids:
            per_sample.setdefault(sid, []).append(name)
    ids = sorted(per_sample)
    return pd.DataFrame({"sample_id": np.asarray(ids, dtype=np.int64),
                         "tags": [sorted(per_sample[i]) for i in ids]})


def tags_for(ws: Workspace, sample_ids: Iterable[int]) -> list[list[str]]:
    """The tags of each of ``sample_ids`` (an empty list for an untagged one), in order."""
    table = tags_in_force(ws).set_index("sample_id")["tags"]
    return [list(table.get(int(sid), [])) for sid in sample_ids]


# --------------------------------------------------------------------------------------
def _parse_ids(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit():
            raise InputError(f"--ids: {part!r} is not a sample id (a whole number ≥ 0)",
                             field="ids")
        out.append(int(part))
    return out


def query_ids(ws: Workspace, query: str) -> list[int]:
    """Samples whose instruction, input or output contain ``query`` (case-insensitive
    substring, as the Explore search without regex)."""
    frame = ws.samples()
    mask = np.zeros(len(frame), dtype=bool)
    for name in ("instruction", "input", "output"):
        if name in frame:
            mask |= frame[name].fillna("").astype(str).str.contains(
                query, case=False, regex=False).to_numpy(dtype=bool)
    return frame.loc[mask, "sample_id"].astype(int).tolist()


def register_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "tag", help="tag or untag samples (ids, a saved selection or a text search); undo",
        description="Append a tag (or untag) line for many samples to the workspace's audit "
                    "log; --undo reverses the last bulk action (of --tag, when given).")
    p.add_argument("--workspace", required=True)
    p.add_argument("--tag", metavar="NAME", help="tag name (letters, digits, . _ -)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--ids", metavar="1,2,3", help="sample ids")
    which.add_argument("--selection", metavar="NAME", help="every sample of a saved selection")
    which.add_argument("--query", metavar="TEXT",
                       help="every sample whose instruction, input or output contains TEXT")
    p.add_argument("--untag", action="store_true", help="remove the tag instead")
    p.add_argument("--undo", action="store_true", help="undo the last bulk action")
    p.set_defaults(func=_cmd_tag)


def _cmd_tag(args) -> int:
    from .text import terminal_safe

    ws = Workspace.open(args.workspace)
    if args.undo:
        if args.ids or args.selection or args.query is not None or args.untag:
            raise InputError("--undo takes no ids, selection, query or --untag")
        undone = undo_bulk(ws, args.tag)
        if undone is None:
            print("nothing to undo")
            return 0
        what = undone.get("tag") or undone.get("rating_column")
        print(terminal_safe(f"undid {undone['action']} {what!r} on "
                            f"{len(undone['sample_ids']):,} samples"))
        return 0
    if args.tag is None:
        raise InputError("--tag NAME is required (or --undo)", field="tag")
    check_tag(args.tag)
    if args.ids:
        ids = _parse_ids(args.ids)
    elif args.selection:
        from .select import load_selection

        ids = load_selection(ws, args.selection)["sample_ids"]
    elif args.query is not None:
        ids = query_ids(ws, args.query)
    else:
        raise InputError("say which samples: --ids, --selection or --query")
    entry = tag_samples(ws, args.tag, ids, untag=args.untag)
    print(terminal_safe(f"{entry['action']} {args.tag!r}: {len(entry['sample_ids']):,} "
                        f"samples ({entry['action_id']})"))
    return 0
