"""The one owner of the name of a DS2 score: rating column → score file, and back.

A rating column is data: any text a dataset uses as a field name (``claude_ge_4_5``,
``quality score``, ``a/b``, ``質``, a name with U+2028). Its DS2 scores live in
``scores/<score name>.parquet``, so the score name must be a safe file name and distinct
columns must never share one:

- a column made only of ``A-Z a-z 0-9 _ -`` (and at most ``MAX_SLUG`` long) keeps its name:
  ``claude_ge_4_5`` → ``ds2_claude_ge_4_5`` (what every existing workspace and the demo use);
- any other column gets a readable slug (unsafe runs → ``_``) plus ``~`` and a hash of the
  exact name: ``quality score`` → ``ds2_quality_score~8d3c0c1e2b``. ``~`` never appears in
  a plain name, so the two kinds cannot meet, and the hash separates ``a/b`` from ``a b``.

The reverse direction is not parsed from the file name: curation stores the exact rating
column in the sidecar (``params.rating_column``) and ``ds2_rating_column`` reads it from
there. Audit decisions are logged under the exact column and matched exactly; a person may
type a DS2 score name where a column is asked for (``--write-back-rating ds2_x``), which
``resolve_rating_column`` turns into its column before anything is looked up.
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .workspace import Workspace

DS2_PREFIX = "ds2_"
#: Longest slug kept whole; longer columns are cut and hashed (file names stay < 255 bytes).
MAX_SLUG = 100
_PLAIN = re.compile(r"[A-Za-z0-9_-]+")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_HASH_CHARS = 10


def ds2_score_name(rating_column: str) -> str:
    """The score name of ``rating_column``'s DS2 curation (see the module docstring)."""
    if not isinstance(rating_column, str) or not rating_column:
        from .errors import InputError

        raise InputError(f"a rating column name must be non-empty text, not {rating_column!r}",
                         field="rating_column")
    if _PLAIN.fullmatch(rating_column) and len(rating_column) <= MAX_SLUG:
        return DS2_PREFIX + rating_column
    slug = _UNSAFE.sub("_", rating_column)[:MAX_SLUG]
    digest = hashlib.sha256(rating_column.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{DS2_PREFIX}{slug}~{digest[:_HASH_CHARS]}"


def is_ds2_score(score_name: str) -> bool:
    return score_name.startswith(DS2_PREFIX)


def ds2_rating_column(ws: "Workspace", score_name: str) -> str:
    """The exact rating column a DS2 score file was curated from (its sidecar's
    ``params.rating_column``; a sidecar without it, written by hand or by an older
    Cherrypick, falls back to the name without its prefix)."""
    meta = ws.score_meta(score_name) or {}
    params = meta.get("params") if isinstance(meta, dict) else None
    column = params.get("rating_column") if isinstance(params, dict) else None
    if isinstance(column, str) and column:
        return column
    return score_name[len(DS2_PREFIX):] if is_ds2_score(score_name) else score_name


def ds2_scores(ws: "Workspace") -> dict[str, str]:
    """Every DS2 score file of ``ws``: score name → exact rating column (for pickers)."""
    return {name: ds2_rating_column(ws, name) for name in ws.score_names()
            if is_ds2_score(name)}


def resolve_rating_column(ws: "Workspace", name: str) -> str:
    """The rating column ``name`` means: itself when it has DS2 scores (or names nothing
    else), else the column of the DS2 score file called ``name`` (a person typed the score
    name, e.g. ``ds2_claude_ge_4_5``)."""
    scores = ws.score_names()
    if not isinstance(name, str) or not name or ds2_score_name(name) in scores:
        return name
    if is_ds2_score(name) and name in scores:
        return ds2_rating_column(ws, name)
    return name


def check_score_owner(ws: "Workspace", rating_column: str) -> None:
    """Refuse to let curation of ``rating_column`` overwrite the DS2 file of another column
    (an older Cherrypick's sanitised name, or a case-insensitive file system)."""
    from .errors import InputError

    name = ds2_score_name(rating_column)
    if ws.score_meta(name) is None:
        return
    owner = ds2_rating_column(ws, name)
    if owner != rating_column:
        raise InputError(f"scores/{name}.parquet holds the DS2 scores of another rating "
                         f"column ({owner!r}, not {rating_column!r}); delete scores/{name}.* "
                         "or pass --force to replace them",
                         file=str(ws.path("scores", f"{name}.parquet")))
