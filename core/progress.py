"""Progress is one callback, ``progress(done, total, note)``.

The CLI wraps tqdm around it, the app wraps ``st.progress``; cancelling means the callback
raises (``core.errors.Cancelled``). Functions accept ``progress=None`` for silence.
"""

from __future__ import annotations

from typing import Callable, Optional

Progress = Callable[[int, int, str], None]


def silent(done: int, total: int, note: str = "") -> None:
    """A progress callback that does nothing."""


def report(progress: Optional[Progress], done: int, total: int, note: str = "") -> None:
    """Call ``progress`` if given."""
    if progress is not None:
        progress(done, total, note)


class TqdmProgress:
    """A progress callback drawing a tqdm bar (used by the CLI)."""

    def __init__(self, desc: str = "", unit: str = "it"):
        self.desc = desc
        self.unit = unit
        self._bar = None

    def __call__(self, done: int, total: int, note: str = "") -> None:
        from tqdm.auto import tqdm

        if self._bar is None or self._bar.total != total:
            if self._bar is not None:
                self._bar.close()
            self._bar = tqdm(total=total, desc=self.desc, unit=self.unit, dynamic_ncols=True)
        self._bar.n = done
        if note:
            self._bar.set_postfix_str(note, refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
