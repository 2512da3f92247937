"""The Explore page's bulk-action bar and its tag colouring (``core.tags``).

:func:`bulk_actions` acts on the current map selection (or, without one, the search
matches): tag them, reject them, send them to an audit queue, or undo the last bulk action.
Each button runs its action in an ``on_click`` callback, so the page rerun that follows
already draws the new tags and shows one plain-text message about what was done.

:func:`with_tag_columns` adds one boolean ``tags.<name>`` column per tag in force to the
Explore frame, so "Colour by" offers tags beside the scores (a copy: the shared pool frame
is read-only).
"""

from __future__ import annotations

from typing import Sequence

import pandas as pd
import streamlit as st

from core.errors import InputError
from core.names import ds2_scores
from core.tags import (bulk_decide, bulk_history, check_tag, tag_samples, tag_sets,
                       undo_bulk)
from core.workspace import AUDIT, Workspace

from .messages import plain, show_caption, show_error, show_success
from .state import file_key

TAG_PREFIX = "tags."
MESSAGE = "bulk_action_message"  # (kind, text) shown once after the action's rerun
TAG_NAME = "bulk_tag_name"


def tag_log_key(ws: Workspace) -> str:
    """Cache key of the log the tags fold from: an append always grows it."""
    return file_key(ws, AUDIT)


@st.cache_data(show_spinner=False, max_entries=8)
def _tag_sets(root: str, key: str) -> dict[str, set[int]]:
    return tag_sets(Workspace(root))


@st.cache_data(show_spinner=False, max_entries=8)
def _last_action(root: str, key: str) -> dict | None:
    history = bulk_history(Workspace(root))
    return history[-1] if history else None


def with_tag_columns(ws: Workspace, frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` plus a ``tags.<name>`` column (True where the sample carries the tag) per
    tag in force; ``frame`` itself when there are none."""
    tags = _tag_sets(str(ws.root), tag_log_key(ws))
    if not tags:
        return frame
    ids = frame["sample_id"]
    return frame.assign(**{f"{TAG_PREFIX}{name}": ids.isin(members).to_numpy()
                           for name, members in tags.items()})


def _run(ws: Workspace, action, *args) -> None:
    """Do one bulk action in a callback and leave its message for the rerun."""
    try:
        st.session_state[MESSAGE] = ("success", action(ws, *args))
    except InputError as err:
        st.session_state[MESSAGE] = ("error", str(err))


def _tag(ws: Workspace, ids: list[int]) -> str:
    name = check_tag(st.session_state.get(TAG_NAME, "").strip())
    entry = tag_samples(ws, name, ids)
    return f"Tagged {len(entry['sample_ids']):,} samples as {name}."


def _decide(ws: Workspace, what: str, ids: list[int], column: str) -> str:
    done = bulk_decide(ws, what, ids, column)
    verb = "Rejected" if what == "reject" else "Sent to the audit queue"
    return f"{verb}: {len(done['sample_ids']):,} samples (rating column {column})."


def _undo(ws: Workspace) -> str:
    undone = undo_bulk(ws)
    if undone is None:
        return "Nothing to undo."
    return f"Undid: {_describe(undone)}."


def _describe(action: dict) -> str:
    n = f"{len(action['sample_ids']):,} samples"
    if action["action"] in ("tag", "untag"):
        return f"{action['action']} {action['tag']} on {n}"
    what = "reject" if action["action"] == "reject" else "send to audit queue"
    return f"{what} ({action['rating_column']}) on {n}"


def bulk_actions(ws: Workspace, ids: Sequence[int], what: str) -> None:
    """The bar: ``ids`` are the samples acted on, ``what`` names them ("selected",
    "matching")."""
    ids = [int(i) for i in ids]
    message = st.session_state.pop(MESSAGE, None)
    with st.container(border=True, key="bulk_actions"):
        show_caption(f"Bulk actions on the {len(ids):,} {what} samples" if ids else
                     "Bulk actions: select points on the map (box or lasso) or search first")
        columns = sorted(set(ds2_scores(ws).values()))
        name_col, tag_col, reject_col, queue_col, undo_col = st.columns([3, 1, 1, 2, 2])
        name_col.text_input("Tag as …", key=TAG_NAME, placeholder="tag name, e.g. math",
                            label_visibility="collapsed")
        tag_col.button("Tag", key="bulk_tag", disabled=not ids, on_click=_run,
                       args=(ws, _tag, ids), help="Letters, digits, '.', '_' or '-'.")
        no_ds2 = ("Needs DS2 scores on a rating column (Data page); tag the samples and use "
                  "the exclude_tagged recipe filter instead.")
        column = (st.selectbox("Rating column", columns, key="bulk_rating_column")
                  if len(columns) > 1 else columns[0] if columns else None)
        reject_col.button("Reject", key="bulk_reject", disabled=not ids or column is None,
                          on_click=_run, args=(ws, _decide, "reject", ids, column),
                          help=no_ds2 if column is None else
                          "Drops them from every selection that excludes rejected rows.")
        queue_col.button("Send to audit queue", key="bulk_queue",
                         disabled=not ids or column is None, on_click=_run,
                         args=(ws, _decide, "queue", ids, column),
                         help=no_ds2 if column is None else
                         "Lists them on the Audit page to decide one by one.")
        last = _last_action(str(ws.root), tag_log_key(ws))
        undo_col.button("Undo last", key="bulk_undo", disabled=last is None, on_click=_run,
                        args=(ws, _undo),
                        help=plain(f"Undo: {_describe(last)}") if last else
                        "No bulk action to undo.")
    if message is not None:
        kind, text = message
        (show_success if kind == "success" else show_error)(text)
