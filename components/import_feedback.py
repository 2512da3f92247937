"""What the Data page's import form says, kept true to the file in front of the person.

- A check or import result belongs to one file: picking another file (a new upload or a new
  path) forgets it, and a failed check or import removes it, so an old success summary
  never sits under a new error.
- An uploaded file is stored under the server's workspaces folder; errors about it name
  the file the person uploaded, not that server path.
- The sidebar's "Import a file" link opens the Data page with ``?import=1``: the form is
  then drawn expanded.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from .messages import show_error

RESULT_OWNER = "data_result_for"  # the file path the shown result belongs to
IMPORT_QUERY = "import"


def forget_result_of_other_files(path: Path | None, result_key: str) -> None:
    """Drop the shown check/import result when the file in the form changed."""
    current = str(path) if path is not None else None
    if st.session_state.get(RESULT_OWNER) != current:
        st.session_state.pop(result_key, None)
        st.session_state[RESULT_OWNER] = current


def show_import_error(err: Exception, path: Path, result_key: str,
                      uploaded_name: str | None = None) -> None:
    """Show a failed check or import (naming the uploaded file, when it was one) and drop
    any earlier result."""
    st.session_state.pop(result_key, None)
    message = str(err)
    if uploaded_name:
        for form in {str(path), str(Path(path).resolve())}:
            message = message.replace(form, uploaded_name)
    show_error(message)


def form_expanded(no_workspace: bool) -> bool:
    """Open the import form when there is no workspace or the sidebar link asked for it."""
    return no_workspace or st.query_params.get(IMPORT_QUERY) == "1"
