"""The notebook API (core/api.py): the README's example runs as written on real rows, and
each call gives what the CLI's step gives."""

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import core
from core.errors import InputError
from tests.real_rows import first_rows

REPO = Path(__file__).resolve().parents[1]
ALPACA = REPO.parent / "shared" / "data" / "alpaca_random_9k.jsonl.gz"


def readme_example() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## The Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "the README's Python API section has no python block"
    return blocks[0]


def test_import_core_is_light():
    import subprocess
    import sys

    code = "import core, sys; print('torch' in sys.modules, 'streamlit' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, check=True).stdout.split()
    assert out == ["False", "False"]
    assert set(core._API) <= set(dir(core))
    with pytest.raises(AttributeError):
        core.no_such_job


def test_names_do_not_collide_with_subpackages():
    """``core.select`` and ``core.export`` are modules; the API's names must stay functions
    even after those modules are imported."""
    import core.export  # noqa: F401
    import core.select  # noqa: F401

    assert callable(core.select_subset) and callable(core.export_selection)
    assert not hasattr(core.select_subset, "__path__")


def test_dataframe_needs_its_columns():
    with pytest.raises(InputError, match="'output'"):
        core.score_ifd(pd.DataFrame({"instruction": ["a"]}))


@pytest.mark.lm
def test_readme_example_runs(tmp_path, monkeypatch):
    rows = first_rows(ALPACA, 24)
    with open(tmp_path / "my_data.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps({k: row[k] for k in ("instruction", "input", "output")}) + "\n")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(readme_example(), "README.md", "exec"), namespace)

    scores, ds2, top = namespace["scores"], namespace["ds2"], namespace["top"]
    assert len(scores) == 24 and scores["ifd"].notna().sum() >= 20
    assert {"rifd", "ifd_ppl"} <= set(scores.columns)
    # the same as the CLI's step wrote (the API adds nothing of its own)
    ws = core.open_workspace(tmp_path / "workspaces" / "mine")
    stored = ws.read_score("ifd")
    np.testing.assert_allclose(scores["ifd"].to_numpy(), stored["ifd"].to_numpy())
    # Cherry's rule: 10 % of the rows with IFD <= 1, highest IFD first, in the input's schema
    usable = stored[(stored["ifd"] <= 1) & ~stored["truncated"]]
    assert len(top.sample_ids) == int(0.1 * len(usable)) >= 1
    best = usable.sort_values("ifd", ascending=False)["ifd"].head(len(top.sample_ids))
    chosen = stored.set_index("sample_id").loc[top.sample_ids, "ifd"]
    np.testing.assert_allclose(sorted(chosen), sorted(best))
    lines = (tmp_path / "workspaces" / "mine" / "exports" / "top10.jsonl").read_text(
        encoding="utf-8").splitlines()
    assert len(lines) == len(top.sample_ids)
    assert set(json.loads(lines[0])) == {"instruction", "input", "output"}
    assert len(ds2) == 24 and ds2.index.equals(namespace["frame"].index)

    # on a DataFrame, IFD equals the workspace's (same model, same text)
    frame = ws.samples(["instruction", "input", "output"]).head(4)
    direct = core.score_ifd(frame)
    np.testing.assert_allclose(direct["ifd"].to_numpy(), stored["ifd"].head(4).to_numpy(),
                               rtol=1e-5)
