"""Cherrypick's scoring engine: plain functions over arrays and data frames.

The Streamlit app and the CLI (`python -m core ...`) are two thin faces of it; nothing in
this package imports Streamlit. In a notebook, ``import core`` gives the jobs in one call
each (``core.import_data``, ``core.prepare``, ``core.score_ifd``, ``core.score_recost``,
``core.curate_ratings``, ``core.select_subset``, ``core.export_selection``,
``core.open_workspace``): see ``core/api.py``. They load on first use, so ``import core``
stays fast.
"""

__version__ = "0.1.0"

_API = ("open_workspace", "import_data", "prepare", "score_ifd", "score_recost",
        "curate_ratings", "select_subset", "export_selection")


def __getattr__(name: str):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'core' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_API))
