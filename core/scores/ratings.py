"""Rating values → DS2 classes (docs/methods.md §3, "Rating scale").

DS2 works on K integer classes 0..K−1; a rater's raw values (the 1–10 overall rating, a 0–5
score, labels) are mapped by ``to_classes`` with a recorded table. Missing ratings (None, NaN)
are class −1 (``MISSING``): they are never flagged, never vote, never count in the consensus.
At most ``MAX_CLASSES`` − 1 is a class label: a larger one is a raw score read as a class.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import InputError

SCALES = ("classes", "ds2-10", "0-5", "1-5")
MISSING = -1
# More classes than any rating scale in use (DS2 has 6): a larger label is a raw score read
# as a class by mistake, and K x K transition fits would not end.
MAX_CLASSES = 100

_UNPARSEABLE = object()


def _is_missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, (float, np.floating)) and math.isnan(value)


def _as_number(value: Any):
    """float(value), ``None`` for missing, ``_UNPARSEABLE`` when it is not a number."""
    if _is_missing(value):
        return None
    if isinstance(value, (bool, np.bool_, int, float, np.integer, np.floating)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return _UNPARSEABLE
        if math.isnan(number):
            return None
    else:
        return _UNPARSEABLE
    return number if math.isfinite(number) else _UNPARSEABLE  # infinity is no rating


def _numbers(values: Any) -> tuple[np.ndarray, np.ndarray]:
    """(float array with NaN for missing, bool array marking unparseable entries)."""
    if isinstance(values, pd.Series):
        arr = values.to_numpy()
    elif isinstance(values, np.ndarray):
        arr = values
    else:
        arr = np.asarray(list(values), dtype=object)
    if arr.dtype.kind in "biuf":
        out = arr.astype(np.float64)
        bad = np.isinf(out)  # infinity is no rating: unparseable, as in _as_number
        out[bad] = np.nan
        return out, bad
    out = np.empty(len(arr), dtype=np.float64)
    bad = np.zeros(len(arr), dtype=bool)
    for i, v in enumerate(arr.ravel()):
        x = _as_number(v)
        if x is _UNPARSEABLE:
            out[i] = np.nan
            bad[i] = True
        else:
            out[i] = np.nan if x is None else x
    return out, bad


def _round_half_up(x: np.ndarray) -> np.ndarray:
    return np.floor(x + 0.5)


def to_classes(values: Any, scale: str | Mapping | None = None, *,
               num_classes: int | None = None, field: str = "rating",
               rows: Sequence | None = None) -> tuple[np.ndarray, dict]:
    """Map raw ratings onto integer classes 0..K−1 (−1 = missing).

    ``scale``: ``"classes"`` (integer labels as they are; the default for integer columns),
    ``"ds2-10"`` (DS2's 1–10 overall rating: clip to [4, 9] − 4, unparseable → 0, K = 6),
    ``"0-5"`` (AlpaGasus: round half up, K = 6, so class 5 means ≥ 4.5), ``"1-5"`` (round half
    up − 1, K = 5), or a dict ``{raw value: class}``. ``rows`` names the rows in error
    messages (default: the 0-based position). Returns the classes and a record of the
    mapping used (scale, K, table, counts), which callers store with the result.
    """
    if not isinstance(values, (pd.Series, np.ndarray)):
        values = list(values)
    numbers, bad = _numbers(values)
    row_name = (lambda i: int(rows[i]) if rows is not None else int(i))
    missing = np.isnan(numbers) & ~bad
    record: dict[str, Any] = {"field": field}

    def fail(i: int, why: str):
        raw = np.asarray(values.to_numpy() if isinstance(values, pd.Series) else values,
                         dtype=object)[i]
        raise InputError(f"rating {raw!r} {why}", row=row_name(i), field=field)

    if scale is None:
        has = ~np.isnan(numbers)
        if bad.any():
            fail(int(np.flatnonzero(bad)[0]), "is not a number; pass a scale with a mapping "
                                             "(--mapping '{\"good\": 1, \"bad\": 0}')")
        if np.any(numbers[has] != np.round(numbers[has])):
            fail(int(np.flatnonzero(has & (numbers != np.round(numbers)))[0]),
                 "is not an integer class; pass --scale (ds2-10, 0-5, 1-5) or --mapping")
        scale = "classes"

    if isinstance(scale, Mapping):
        if not scale:
            raise InputError("the mapping is empty; give {raw value: class, ...}", field=field)
        table = {}
        for key, cls in scale.items():
            if not isinstance(cls, (int, np.integer)) or isinstance(cls, bool) or cls < 0:
                raise InputError(f"mapping value for {key!r} must be a class ≥ 0, got {cls!r}",
                                 field=field)
            if cls >= MAX_CLASSES:  # the cap of the scale path: K x K fits would not end
                raise InputError(f"mapping value for {key!r} is class {int(cls)}, not a class "
                                 f"label (at most {MAX_CLASSES - 1})", field=field)
            k = _as_number(key)
            table[("num", k) if isinstance(k, float) else ("str", str(key))] = int(cls)
        raw = np.asarray(values.to_numpy() if isinstance(values, pd.Series) else values,
                         dtype=object)
        out = np.full(len(numbers), MISSING, dtype=np.int64)
        for i in range(len(numbers)):
            if missing[i]:
                continue
            key = ("str", str(raw[i]).strip()) if bad[i] else ("num", float(numbers[i]))
            if key not in table and not bad[i]:
                key = ("str", str(raw[i]).strip())
            if key not in table:
                fail(i, f"is not in the mapping (keys: {', '.join(map(str, scale))})")
            out[i] = table[key]
        k_classes = max(table.values()) + 1
        record.update(scale="mapping", table={str(k): int(v) for k, v in scale.items()})
    elif scale == "classes":
        if bad.any():
            fail(int(np.flatnonzero(bad)[0]), "is not a number; integer class labels expected")
        has = ~missing
        wrong = has & ((numbers != np.round(numbers)) | (numbers < 0))
        if wrong.any():
            fail(int(np.flatnonzero(wrong)[0]), "is not a class label (an integer ≥ 0); "
                                                "pass --scale or --mapping")
        too_big = has & (numbers >= MAX_CLASSES)
        if too_big.any():
            fail(int(np.flatnonzero(too_big)[0]), f"is not a class label (at most "
                                                  f"{MAX_CLASSES - 1}); pass --scale or "
                                                  "--mapping")
        out = np.where(has, np.nan_to_num(numbers), MISSING).astype(np.int64)
        k_classes = int(out.max()) + 1 if has.any() else 2
        record.update(scale="classes", table="identity")
    elif scale == "ds2-10":
        out = np.where(missing, MISSING, 0).astype(np.int64)
        ok = ~missing & ~bad
        out[ok] = (_round_half_up(np.clip(numbers[ok], 4, 9)) - 4).astype(np.int64)
        k_classes = 6
        record.update(scale="ds2-10", table={"<=4": 0, "5": 1, "6": 2, "7": 3, "8": 4,
                                             ">=9": 5, "unparseable": 0},
                      unparseable=int(bad.sum()))
    elif scale in ("0-5", "1-5"):
        lo, hi = (0.0, 5.0) if scale == "0-5" else (1.0, 5.0)
        if bad.any():
            fail(int(np.flatnonzero(bad)[0]), f"is not a number on the {scale} scale")
        has = ~missing
        out_of_range = has & ((numbers < lo) | (numbers > hi))
        if out_of_range.any():
            fail(int(np.flatnonzero(out_of_range)[0]), f"is outside the {scale} scale")
        out = np.full(len(numbers), MISSING, dtype=np.int64)
        out[has] = (_round_half_up(numbers[has]) - lo).astype(np.int64)
        k_classes = int(hi - lo) + 1
        record.update(scale=scale, table={f"[{c + lo - 0.5:g}, {c + lo + 0.5:g})": c
                                          for c in range(k_classes)},
                      rounding="half up")
    else:
        raise InputError(f"unknown rating scale {scale!r}; use one of {', '.join(SCALES)} "
                         "or a mapping", field=field)

    k_classes = max(int(k_classes), 2)
    if num_classes is not None:
        if out.max(initial=MISSING) >= num_classes:
            raise InputError(f"class {int(out.max())} does not fit num_classes={num_classes}",
                             field=field)
        k_classes = int(num_classes)
    record.update(num_classes=k_classes, missing=int(missing.sum()),
                  counts=np.bincount(out[out >= 0], minlength=k_classes).tolist())
    return out, record
