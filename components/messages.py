"""Messages that quote data, shown as plain text.

Streamlit renders the body of ``st.error``, ``st.warning``, ``st.info``, ``st.success``,
``st.caption``, ``st.markdown``, ``st.subheader`` and ``st.toast`` as Markdown with its own
extensions (``:red[...]`` colour directives, LaTeX between ``$``, GitHub autolinks). A file
name, a record key, a column name or a value quoted in a message is data, so
``![x](http://127.0.0.1/x.png)`` must not load an image, ``[click](javascript:...)`` must not
become a link and ``<img src=x>`` must not become a tag. :func:`plain` backslash-escapes
every character CommonMark, GFM or those extensions give a meaning to (CommonMark renders
``\\X`` as a literal ``X`` for any ASCII punctuation), so the text shows exactly as it is.
The ``show_*`` helpers are the one way pages show such a message.
"""

from __future__ import annotations

import re
from typing import Any

import streamlit as st

# Markdown, GFM (tables, strikethrough, autolinks), HTML, entities, LaTeX and directives.
_MARKUP = re.compile(r"([\\`*_{}\[\]()<>#+\-.!|~$:&^])")
_SETEXT = re.compile(r"(?m)^(\s*)=")  # "===" under a line would make it a heading


def plain(text: Any) -> str:
    """``str(text)`` that Streamlit's Markdown shows literally, never as markup."""
    return _SETEXT.sub(r"\1\\=", _MARKUP.sub(r"\\\1", str(text)))


def _show(kind: str, message: Any, where: Any = None, **kwargs) -> None:
    getattr(st if where is None else where, kind)(plain(message), **kwargs)


def show_error(message: Any, where: Any = None, **kwargs) -> None:
    """``st.error`` of an error (an ``InputError``: file, row, field, message) or a text
    quoting data; ``where`` is a container (a column, a box) instead of the page."""
    _show("error", message, where, **kwargs)


def show_warning(message: Any, where: Any = None, **kwargs) -> None:
    _show("warning", message, where, **kwargs)


def show_info(message: Any, where: Any = None, **kwargs) -> None:
    _show("info", message, where, **kwargs)


def show_success(message: Any, where: Any = None, **kwargs) -> None:
    _show("success", message, where, **kwargs)


def show_caption(message: Any, where: Any = None, **kwargs) -> None:
    _show("caption", message, where, **kwargs)
