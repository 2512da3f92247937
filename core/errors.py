"""One error type for bad input, so the CLI and the app report it the same way."""

from __future__ import annotations


class InputError(ValueError):
    """Bad input a person must fix: names the file, the row and the field when known.

    The CLI prints ``str(err)`` on one line and exits non-zero; the app shows it with
    ``st.error``. ``row`` is the 0-based row (record) of the source file.
    """

    def __init__(self, message: str, *, file: str | None = None, row: int | None = None,
                 field: str | None = None):
        self.message = message
        self.file = file
        self.row = row
        self.field = field
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.file is not None:
            where.append(str(self.file))
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.field is not None:
            where.append(f"field '{self.field}'")
        return (": ".join([", ".join(where), self.message]) if where else self.message)


class Cancelled(RuntimeError):
    """Raised by a progress callback to stop a long step; finished chunks are kept."""
