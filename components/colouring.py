"""What a colouring shows: which columns a person is offered, the values drawn, the range.

- :func:`is_internal`: the bookkeeping columns of the engine's own score files (token
  counts, the two losses behind IFD, truncation flags, DS2's noisy average) are hidden from
  "Colour by" unless asked for; any other score file's columns are shown.
- :func:`colour_values`: the values a map or histogram draws for a column. DS2's
  ``suggested`` holds a rating for every row (the row's own class when DS2 has nothing to
  say), so it is drawn only where the row is flagged; elsewhere it counts as "no score".
- :func:`clip_range`: the 1–99 % quantiles, so one outlier does not squeeze every other
  value into one end of the colour scale or histogram (outliers get the end colour/bin).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# <score file>: columns that explain a score rather than being one
INTERNAL_FIELDS = {
    "ifd": {"loss_conditioned", "loss_direct", "answer_tokens", "truncated"},
    "rifd": {"loss_reverse_conditioned", "loss_reverse_direct", "instruction_tokens",
             "reverse_truncated"},
    "recost": {"entropy_plain", "entropy_knowledge", "demo_rows", "demo_tokens"},
}
DS2_INTERNAL_FIELDS = {"noisy_avg"}
CLIP_QUANTILES = (0.01, 0.99)


def is_internal(column: str) -> bool:
    """True for an engine bookkeeping column such as ``ifd.loss_conditioned``."""
    if "." not in column:
        return False
    name, field = column.split(".", 1)
    if name.startswith("ds2_"):
        return field in DS2_INTERNAL_FIELDS
    return field in INTERNAL_FIELDS.get(name, set())


def offered_columns(columns: list[str], show_internal: bool = False) -> list[str]:
    """The colour columns a person is offered, in the given order."""
    return list(columns) if show_internal else [c for c in columns if not is_internal(c)]


def colour_values(frame: pd.DataFrame, column: str) -> pd.Series:
    """``frame[column]`` as drawn: DS2 suggestions only on flagged rows (NaN elsewhere)."""
    values = frame[column]
    if column.endswith(".suggested"):
        flagged = frame.get(column[: -len("suggested")] + "flagged")
        if flagged is not None:
            values = values.where(flagged.fillna(0).astype(bool))
    return values


def clip_range(values: pd.Series | np.ndarray,
               quantiles: tuple[float, float] = CLIP_QUANTILES) -> tuple[float, float] | None:
    """(low, high) quantiles of the finite values, None when there are none. When the
    quantiles coincide (a nearly constant column), the full range is used instead."""
    finite = np.asarray(values, dtype="float64")
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return None
    lo, hi = (float(q) for q in np.quantile(finite, quantiles))
    if hi <= lo:
        lo, hi = float(finite.min()), float(finite.max())
    return lo, hi
