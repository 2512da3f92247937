"""The Explore map as our own Streamlit component: plotly.js in a frame that returns the
selected sample ids as bytes.

``st.plotly_chart`` sends a selection to Python as one renamed JSON object per point (about
166 bytes each: 29 MB for a 173k-point lasso) and Streamlit re-sends that state on every
later rerun; on a 200k-point map that, not Python, is most of a selection's 3-7 s round
trip (bench/README.md, Explore). This component draws the same ``go.Figure``
(:func:`components.map.map_figure`) with the plotly.js that ships in the plotly wheel, and
sends back an ``Int32Array`` of the selected ``customdata`` ids (4 bytes a point).

The frame's files (``map_frontend/``) and the wheel's ``plotly.min.js`` are copied once into
Cherrypick's cache folder, because Streamlit serves a component from one folder and refuses
symbolic links that lead out of it. The copy is named by a digest of its contents, so a new
plotly or a changed frontend gets a fresh folder and a stale one is never served.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Hashable

import numpy as np
import plotly
import plotly.graph_objects as go

FRONTEND = Path(__file__).with_name("map_frontend")
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
COMPONENT_NAME = "cherrypick_map"


def served_folder() -> Path:
    """The folder Streamlit serves the map from (``index.html``, ``map.js``,
    ``plotly.min.js``), created in the cache on first use."""
    from core.lm.models import cache_root  # the same cache folder as the converted models

    sources = sorted(FRONTEND.iterdir()) + [PLOTLY_JS]
    digest = hashlib.sha256()
    for path in sources:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    target = cache_root() / "map-frontend" / digest.hexdigest()[:16]
    if (target / "index.html").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        for path in sources:
            shutil.copyfile(path, staging / path.name)
        os.replace(staging, target)  # atomic; another process may have won the race
    except OSError:
        if not (target / "index.html").is_file():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


@functools.cache
def _component():
    import streamlit.components.v1 as components

    return components.declare_component(COMPONENT_NAME, path=str(served_folder()))


def selection_ids(value: object) -> list[int]:
    """The sample ids in a value the map sent (little-endian int32 bytes), each once, in
    order; anything else (no selection yet) is no ids."""
    if not isinstance(value, (bytes, bytearray, memoryview)) or len(value) % 4:
        return []
    ids = np.frombuffer(bytes(value), dtype="<i4")
    _, first = np.unique(ids, return_index=True)
    return ids[np.sort(first)].astype(np.int64).tolist()


def ids_key(ids) -> str:
    """A short key over a list of sample ids (for ``map_widget(reuse=...)``)."""
    return hashlib.sha1(np.asarray(ids, dtype=np.int64).tobytes()).hexdigest()


def map_widget(build: Callable[[], go.Figure], *, key: str,
               on_change: Callable[[], None] | None = None, config: dict | None = None,
               reuse: Hashable = None) -> list[int]:
    """Draw the figure ``build()`` returns and return the sample ids selected on it (box,
    lasso or click; ``[]`` before any). ``on_change`` runs when a new selection arrives,
    before the page reruns. ``reuse``: a key over everything ``build`` reads; while it stays
    the same, the figure sent last time is sent again without building it (building and
    encoding a 200k-point map takes about 0.1 s of each rerun)."""
    import streamlit as st

    slot = f"{COMPONENT_NAME}.figure"  # one per session: a cleared map's key is not kept
    kept = st.session_state.get(slot) if reuse is not None else None
    reuse = None if reuse is None else (key, reuse)
    if kept is not None and kept[0] == reuse:
        _, figure, revision, height = kept
    else:
        fig = build()
        figure = fig.to_json().encode("utf-8")
        revision = hashlib.sha1(figure).hexdigest()
        height = int(fig.layout.height or 640)
        if reuse is not None:
            st.session_state[slot] = (reuse, figure, revision, height)
    value = _component()(figure=figure, revision=revision, height=height,
                         config=config or {}, key=key, on_change=on_change, default=None)
    return selection_ids(value)
