"""Paths built from names people type (selections, exports, workspaces, uploads).

One rule for every such name, so a typed name can never climb out of the folder it belongs
to: letters, digits, ``.``, ``_`` and ``-``, starting with a letter or digit, no ``..``, at
most ``MAX_NAME`` characters. ``child_path`` also resolves the result and checks it is still
inside its parent, so a symbolic link planted in the folder cannot redirect a read or write.
Writing anywhere else is only possible through an explicit path such as the CLI's ``--out``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import InputError

MAX_NAME = 100
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,%d}" % (MAX_NAME - 1))
NAME_RULE = (f"use letters, digits, '.', '_' or '-', start with a letter or digit, no '..', "
             f"at most {MAX_NAME} characters")


def is_valid_name(name: object) -> bool:
    """True when ``name`` may be used as a file or folder name (see ``check_name``)."""
    return isinstance(name, str) and NAME_PATTERN.fullmatch(name) is not None \
        and ".." not in name


def show_name(name: object, limit: int = 60) -> str:
    """The name as a one-line Python literal (control characters visible), shortened."""
    if not isinstance(name, str):
        return f"of type {type(name).__name__}"
    if len(name) > limit:
        return f"{name[:limit]!r}… ({len(name)} characters)"
    return repr(name)


def check_name(name: object, what: str = "name") -> str:
    """``name`` unchanged if it is a safe single path component, else a one-line
    ``InputError`` naming ``what`` (e.g. "selection name")."""
    if not is_valid_name(name):
        raise InputError(f"bad {what} {show_name(name)}: {NAME_RULE}")
    return name


def child_path(parent: str | os.PathLike, name: object, suffix: str = "",
               what: str = "name") -> Path:
    """``parent/<name><suffix>`` after ``check_name``; refused when the path resolves
    outside ``parent`` (a symbolic link pointing elsewhere)."""
    check_name(name, what)
    parent = Path(parent)
    path = parent / f"{name}{suffix}"
    base = parent.resolve()
    resolved = path.resolve()
    if resolved.parent != base:
        raise InputError(f"{what} {show_name(name)} points outside {parent} (a symbolic "
                         "link?); remove the link or choose another name", file=str(path))
    return path


def suggest_name(text: str, fallback: str = "workspace") -> str:
    """A valid name made from free text (a file's stem, an upload's name): runs of other
    characters become '-', leading and trailing punctuation go, '..' is collapsed. For
    default values only; a name the person types is checked, never silently changed."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", text)
    name = re.sub(r"\.{2,}", ".", name).strip("-._")[:MAX_NAME].rstrip("-._")
    return name if is_valid_name(name) else fallback
