"""Typed command-line values: each ``register_cli`` uses these as argparse ``type=``, so a
count of 0 or -5, a seed numpy refuses or a ratio of 5 is a one-line ``error:`` with exit
status 2 before any work starts (a zero chunk size or k would otherwise crash or hang a
step after minutes of loading)."""

from __future__ import annotations

import argparse
import math

MAX_SEED = 2**32 - 1  # numpy, scikit-learn and UMAP all accept 0 .. 2**32 - 1


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, not {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, not {text!r}")
    return value


def positive_int(text: str) -> int:
    """A count of at least 1 (``--k``, ``--chunk-size``, ``--limit``, ``--budget`` ...)."""
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """A count that may be 0 (``--max-retries``; ``--max-chars 0`` means no limit)."""
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text!r}")
    return value


def seed(text: str) -> int:
    """A random seed in 0 .. 2**32 - 1."""
    value = _integer(text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be between 0 and {MAX_SEED}, not {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number above 0 (``--timeout`` in seconds)."""
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, not {text!r}")
    return value


def ratio(text: str) -> float:
    """A share in (0, 1] (``--ratio 0.05``)."""
    value = _number(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 1, not {text!r}")
    return value


def probability(text: str) -> float:
    """A share in [0, 1], both ends allowed (``--min-confidence 0`` changes every flag)."""
    value = _number(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {text!r}")
    return value
