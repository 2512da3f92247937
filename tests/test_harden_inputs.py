"""Issue 13, classes 5 and 6: data is never markup or terminal control; every argument and
every file read back is validated. Corpus: ``tests/data/bad/inputs`` (README: one row per
file). CLI cases run as subprocesses started at once (``cli_results``): exit status 2, one
stderr line ``error: ...``, no traceback, no raw control character. App messages go through
AppTest: the element's value, rendered by a CommonMark renderer, is the original text."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from markdown_it import MarkdownIt

from components.messages import plain
from core import atomic
from core.audit import AuditLogWarning, append_decision, make_decision, read_log
from core.cli import _show_warning, build_parser
from core.errors import InputError
from core.export import export_jsonl
from core.io import import_to_workspace, read_datasets
from core.knn import knn_search, run_neighbors
from core.scores.ds2 import run_curate
from core.scores.ratings import to_classes
from core.select import Recipe, load_selection, rerun_selection, score_table
from core.text import terminal_safe
from core.workspace import KNN, MANIFEST, DamagedFileWarning, Workspace

ROOT = Path(__file__).resolve().parents[1]
INPUTS = Path(__file__).resolve().parent / "data" / "bad" / "inputs"
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
HOSTILE = ["![x](http://127.0.0.1/x.png)", "[click](http://127.0.0.1/)", "<img src=x>",
           "<script>alert(1)</script>", "[click](javascript:alert(1))", "# heading",
           "**bold** _it_ ~~gone~~ `code` $x^2$ :red[red] :material/home:", "- item", "1. item",
           "> quote", "| a | b |", "&lt;b&gt; &amp;", "www.example.com a@b.co http://x.y",
           "a\\b\\", "line\n===", "x\n---", "1) ok"]


def _workspace(root: Path, rows: int = 6) -> Workspace:
    """A small workspace with a 0/1 rating ``r``, a word rating ``q`` and a ring kNN graph."""
    src = root.parent / f"{root.name}-source.jsonl"
    src.write_text("".join(json.dumps({"instruction": f"question {i}", "output": f"answer {i}",
                                       "r": i % 2, "q": "good" if i % 3 else "bad"}) + "\n"
                           for i in range(rows)), encoding="utf-8")
    ws, _ = import_to_workspace(src, root)
    idx = np.stack([(np.arange(rows) + s) % rows for s in (1, 2)], axis=1)
    atomic.write_npz(ws.path(KNN), indices=idx,
                     similarities=np.full(idx.shape, 0.9, dtype=np.float32))
    return ws


def _rendered(markdown: str) -> str:
    return MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(markdown)


def _shows_literally(markdown: str, original: str) -> bool:
    """A CommonMark + GFM renderer shows ``markdown`` as exactly ``original``, as text."""
    return _rendered(markdown) == f"<p>{html.escape(original, quote=False)}</p>\n"


# ===== class 5: terminal ========================================================================
def test_terminal_safe_escapes_controls_and_keeps_printable_text():
    raw = "k\x1b]0;pwned\x07 \x1b[2J\x00\t\n\r\x7f\x85\x9b\u2028\u2029\u202e\u2066\u200f\ufeff"
    out = terminal_safe(raw)
    assert out == ("k\\x1b]0;pwned\\x07 \\x1b[2J\\x00\\x09\\x0a\\x0d\\x7f\\x85\\x9b\\u2028"
                   "\\u2029\\u202e\\u2066\\u200f\\ufeff")
    assert not RAW_CONTROL.search(out) and out.isprintable()
    assert terminal_safe(kept := "café ✓ 🍒 👩‍👩‍👧 عاصمة \\ already escaped") == kept
    assert terminal_safe("a\x1bb\nc\x07", keep_newlines=True) == "a\\x1bb\nc\\x07"


def test_cli_warnings_are_one_escaped_line(capsys):
    _show_warning("scores/x\x1b[2J.parquet was damaged\u2028; recomputing", DamagedFileWarning,
                  "f.py", 1)
    _show_warning("audit.jsonl, line 3: skipped \x1b]0;t\x07", AuditLogWarning, "f.py", 1)
    assert capsys.readouterr().err.splitlines() == [
        "warning: scores/x\\x1b[2J.parquet was damaged\\u2028; recomputing",
        "warning: audit.jsonl, line 3: skipped \\x1b]0;t\\x07"]


# ===== class 5: app =============================================================================
@pytest.mark.parametrize("text", HOSTILE)
def test_plain_makes_markdown_show_literally(text):
    assert _shows_literally(plain(text), text), _rendered(plain(text))
    if text in HOSTILE[:4]:  # the examples really are markup when not escaped
        assert not _shows_literally(text, text)


def _app(monkeypatch, tmp_path, workspace: Path):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("CHERRYPICK_WORKSPACE", str(workspace))
    monkeypatch.setenv("CHERRYPICK_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CHERRYPICK_DATA", str(tmp_path / "no-data"))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    return at


def test_app_shows_keys_file_and_workspace_names_as_text(monkeypatch, tmp_path):
    ws = _workspace(tmp_path / "[click](javascript:alert(1)) <img src=x>")
    bad = tmp_path / "![x](http:127.0.0.1) keys.jsonl"
    shutil.copy(INPUTS / "keys_markdown.jsonl", bad)
    at = _app(monkeypatch, tmp_path, ws.root)
    at.switch_page("pages/data.py").run()
    heads = [h.value for h in at.subheader if h.value.startswith("Steps for")]
    assert heads and _shows_literally(heads[0], f"Steps for {ws.name}"), heads
    where = f"{len(ws):,} samples · {ws.root.resolve()}"
    assert any(_shows_literally(c.value, where) for c in at.caption)
    at.radio(key="data_source").set_value("Path on this machine").run()
    at.text_input(key="data_path").input(str(bad)).run()
    at.button(key="data_check").click().run()
    assert not at.exception and len(at.error) == 1
    with pytest.raises(InputError) as expected:
        read_datasets([bad])
    value = at.error[0].value
    assert "![x](http://127.0.0.1/x.png)" in str(expected.value)
    assert _shows_literally(value, str(expected.value)), _rendered(value)
    assert "<img" not in _rendered(value) and "<a " not in _rendered(value)


@pytest.mark.filterwarnings("ignore::core.audit.AuditLogWarning")  # shown on the page
def test_app_audit_page_shows_each_skipped_log_line(monkeypatch, tmp_path):
    ws = _workspace(tmp_path / "ws", rows=12)
    run_curate(ws, "r", rounds=5, steps=50, epochs=5)
    shutil.copy(INPUTS / "audit_malformed.jsonl", ws.path("audit.jsonl"))
    at = _app(monkeypatch, tmp_path, ws.root)
    at.switch_page("pages/audit.py").run()
    assert not at.exception and not at.error
    shown = [w.value for w in at.warning]
    for line in (2, 3, 4, 5, 6, 8, 9, 10, 11, 12):
        text = f"{ws.path('audit.jsonl').resolve()}, line {line}: skipped, "
        assert sum(_rendered(v).startswith(f"<p>{html.escape(text)}") for v in shown) == 1, line
    assert len(shown) == 10


# ===== class 6: arguments =======================================================================
BAD_ARGS = [
    ("import x.jsonl --workspace w --sample 0", "--sample", "must be at least 1"),
    ("import x.jsonl --workspace w --limit -1", "--limit", "must be at least 1"),
    ("import x.jsonl --workspace w --max-chars -1", "--max-chars", "must be 0 or more"),
    ("import x.jsonl --workspace w --seed -1", "--seed", "must be between 0 and 4294967295"),
    ("embed --workspace w --chunk-size 0", "--chunk-size", "must be at least 1"),
    ("embed --workspace w --batch-size -64", "--batch-size", "must be at least 1"),
    ("neighbors --workspace w --k 0", "--k", "must be at least 1"),
    ("neighbors --workspace w --k 2.5", "--k", "must be a whole number, not '2.5'"),
    ("map --workspace w --clusters 0", "--clusters", "must be at least 1"),
    ("map --workspace w --seed 99999999999", "--seed", "must be between 0"),
    ("score ifd --workspace w --limit 0", "--limit", "must be at least 1"),
    ("score ifd --workspace w --max-length 0", "--max-length", "must be at least 1"),
    ("score recost --workspace w --reference r --k 0", "--k", "must be at least 1"),
    ("score recost --workspace w --reference r --chunk-size 0", "--chunk-size", "at least 1"),
    ("rate --workspace w --backend local --name r --concurrency 0", "--concurrency", "least 1"),
    ("rate --workspace w --backend local --name r --timeout 0", "--timeout", "must be above 0"),
    ("rate --workspace w --backend local --name r --timeout nan", "--timeout", "finite"),
    ("rate --workspace w --backend local --name r --max-retries -1", "--max-retries", "0 or"),
    ("rate --workspace w --backend local --name r --chunk-size 0", "--chunk-size", "at least 1"),
    ("curate --workspace w --rating-column r --k 0", "--k", "must be at least 1"),
    ("curate --workspace w --rating-column r --seed -5", "--seed", "must be between 0"),
    ("select --workspace w --name s --policy ifd --budget 0", "--budget", "must be at least 1"),
    ("select --workspace w --name s --policy ifd --budget ten", "--budget", "whole number"),
    ("select --workspace w --name s --policy ifd --ratio 0", "--ratio", "above 0 and at most 1"),
    ("select --workspace w --name s --policy ifd --ratio 1.5", "--ratio", "at most 1"),
    ("select --workspace w --name s --policy ifd --per-cluster-cap 0", "--per-cluster-cap",
     "must be at least 1"),
]


@pytest.mark.parametrize("argv, flag, message", BAD_ARGS, ids=[a[0] for a in BAD_ARGS])
def test_bad_numbers_are_one_error_line_with_status_2(capsys, argv, flag, message):
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(argv.split())
    assert done.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: argument {flag}: "), captured.err
    assert message in lines[0] and "usage:" not in captured.err + captured.out


def test_knn_refuses_a_bad_k_at_the_library_boundary(tmp_path):
    x = np.eye(4, dtype=np.float32)
    for k in (0, -1, 2.5, True, "3"):
        with pytest.raises(InputError, match="k must be a whole number ≥ 1") as err:
            knn_search(x, k=k)
        assert err.value.field == "k"
    with pytest.raises(InputError, match="k must be a whole number"):
        run_neighbors(_workspace(tmp_path / "ws"), k=0)  # before looking for embeddings


# ===== class 6: files read back =================================================================
def test_mapping_classes_have_the_cap_of_the_scale_path():
    values = ["good", "bad", "good"]
    for top in (100, 150, 10 ** 9):
        with pytest.raises(InputError, match=rf"is class {top}, not a class label \(at most 99\)"):
            to_classes(values, {"good": top, "bad": 0})
    classes, record = to_classes(values, {"good": 99, "bad": 0})
    assert classes.tolist() == [99, 0, 99] and record["num_classes"] == 100


RECIPES = {"recipe_wrong_types.yaml": ("budget.ratio", r"must be a number \(or null\), not 'ten'"),
           "recipe_ratio_out_of_range.json": ("budget.ratio", "the ratio must be between 0 and 1"),
           "recipe_list_for_number.yaml": ("filters[1].min", r"must be a number \(or null\), "
                                                             r"not \[0.1, 0.2\] \(a list\)")}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_files_with_wrong_types_name_the_file_and_field(name):
    field, pattern = RECIPES[name]
    with pytest.raises(InputError) as err:
        Recipe.load(INPUTS / name)
    assert err.value.file == str(INPUTS / name) and err.value.field == field, str(err.value)
    assert re.search(pattern, str(err.value)) and "\n" not in str(err.value)


@pytest.mark.parametrize("spec, field, pattern", [
    ({"budget": {"n": [1, 2]}}, "budget.n", "whole number"),
    ({"budget": {"n": 2.5}}, "budget.n", "whole number"),
    ({"budget": {"ratio": True}}, "budget.ratio", "a number"),
    ({"budget": {"ratio": float("nan")}}, "budget.ratio", "a number"),
    ({"budget": {"per_cluster_cap": 0}}, "budget.per_cluster_cap", "≥ 1"),
    ({"budget": "ten rows"}, "budget", "must be a mapping"),
    ({"filters": "exclude_duplicates"}, "filters", "must be a list"),
    ({"filters": [{"type": "threshold", "column": 3, "max": 1}]}, "filters[0].column", "text"),
    ({"ranking": {"type": "score", "column": "ifd", "descending": "yes"}},
     "ranking.descending", "true or false"),
    ({"ranking": {"type": ["ifd"]}}, "ranking.type", "unknown ranking type"),
    ({1: "x"}, None, "unknown recipe key"),
])
def test_recipe_values_of_the_wrong_type_are_refused(spec, field, pattern):
    with pytest.raises(InputError, match=pattern) as err:
        Recipe.from_dict(spec)
    assert err.value.field == field


SELECTIONS = {
    "selection_handedited.json": ("sample_ids[2]", "must be a whole-number sample id, not '3'"),
    "selection_out_of_range.json": ("sample_ids[2]", "sample id 999999 is not in the workspace"),
    "selection_missing_ids.json": ("sample_ids", "missing; save the selection again"),
    "selection_not_json.json": (None, "not a readable selection file \\(JSONDecodeError"),
}


@pytest.mark.parametrize("name", sorted(SELECTIONS))
def test_hand_edited_selections_name_the_file_and_field(tmp_path, name):
    ws, stem, (field, pattern) = _workspace(tmp_path / "ws"), Path(name).stem, SELECTIONS[name]
    ws.path("selections").mkdir()
    shutil.copy(INPUTS / name, ws.path("selections", name))
    for read in (load_selection, rerun_selection):
        with pytest.raises(InputError) as err:
            read(ws, stem)
        assert (Path(err.value.file).name, err.value.field) == (name, field), str(err.value)
        assert re.search(pattern, str(err.value)) and "\n" not in str(err.value)


def test_score_and_map_files_with_wrong_columns_or_types_name_file_and_field(tmp_path):
    ws = _workspace(tmp_path / "ws")
    ws.path("scores").mkdir()
    cases = [("score_wrong_columns.parquet", "scores/ifd.parquet", ["ifd"], "sample_id",
              r"no column 'sample_id' \(it has: id, ifd\)"),
             ("score_wrong_types.parquet", "scores/ifd.parquet", ["ifd"], "ifd",
              "must hold numbers, found (str|object)"),
             ("map_wrong_columns.parquet", "map.parquet", ["map.cluster"], "map.cluster",
              r"no column 'cluster' in map \(it has: x, y, group\)")]
    for corpus, target, columns, field, pattern in cases:
        shutil.copy(INPUTS / corpus, ws.path(target))
        with pytest.raises(InputError) as err:
            score_table(ws, columns)
        assert (err.value.file, err.value.field) == (str(ws.path(target)), field), str(err.value)
        assert re.search(pattern, str(err.value))
        ws.path(target).unlink()
    frame = pd.DataFrame({"sample_id": [0, 1, 7], "ifd": [0.1, 0.2, 0.3]})  # 7: not in ws
    frame.to_parquet(ws.path("scores", "ifd.parquet"), index=False)
    with pytest.raises(InputError, match="sample id 7 is not in the workspace") as err:
        score_table(ws, ["ifd"])
    assert (err.value.row, err.value.field) == (2, "sample_id")


EXPECTED_SKIPS = {2: "not valid JSON", 3: "sample_id '3' is not a sample id",
                  4: "unknown action 'approve'", 5: "new '2' is not a rating",
                  6: "sample_id True is not a sample id", 8: "sample_id -1 is not a sample id",
                  9: "not a JSON object but list", 10: "a set without its new rating",
                  11: "rating_column '' is not a column name", 12: "a cut-off last line"}


def test_malformed_audit_lines_are_skipped_with_a_warning_naming_each(tmp_path):
    ws = Workspace(tmp_path)
    shutil.copy(INPUTS / "audit_malformed.jsonl", ws.path("audit.jsonl"))
    problems: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        entries = read_log(ws, problems)
    assert [(e["sample_id"], e["action"]) for e in entries] == [(1, "accept"), (2, "reject")]
    assert [str(w.message) for w in caught if w.category is AuditLogWarning] == problems
    assert len(problems) == len(EXPECTED_SKIPS)
    for message, (line, why) in zip(problems, EXPECTED_SKIPS.items()):
        assert message.startswith(f"{ws.path('audit.jsonl')}, line {line}: skipped, {why}")
    with pytest.warns(AuditLogWarning):  # a new decision after a cut-off line still counts
        append_decision(ws, 4, "r", "keep", old=1, suggested=0)
        assert [e["sample_id"] for e in read_log(ws)] == [1, 2, 4]


def test_decisions_the_reader_would_skip_are_never_written(tmp_path):
    for kwargs in ({"old": "1", "suggested": 0}, {"old": 1, "suggested": float("inf")},
                   {"old": 1, "suggested": True}):
        with pytest.raises(InputError, match="not a valid audit decision"):
            make_decision(1, "r", "accept", **kwargs)
    with pytest.raises(InputError, match="sample_id -2"):
        make_decision(-2, "r", "reject")
    line = "a\u2028b"  # a column name with U+2028 survives the log (lines end at \n only)
    append_decision(Workspace(tmp_path), 3, line, "accept", old=1, suggested=0)
    assert [e["rating_column"] for e in read_log(Workspace(tmp_path))] == [line]


def test_workspace_open_refuses_a_file_a_missing_folder_and_a_broken_manifest(tmp_path):
    (tmp_path / "file.txt").write_text("not a folder", encoding="utf-8")
    with pytest.raises(InputError, match=r"not a workspace \(a file, not a folder\)"):
        Workspace.open(tmp_path / "file.txt")
    with pytest.raises(InputError, match=r"not a workspace \(no such folder\)"):
        Workspace.open(tmp_path / "nothing")
    ws = _workspace(tmp_path / "ws")
    manifest = atomic.read_json(ws.path(MANIFEST))
    for counts in ({"samples": "6"}, None, {"samples": -1}, [6]):
        atomic.write_json(ws.path(MANIFEST), {**manifest, "counts": counts})
        with pytest.raises(InputError) as err:
            Workspace.open(ws.root)
        assert err.value.field == "counts.samples" and "re-import" in str(err.value)


def test_export_refuses_an_out_that_is_a_folder(tmp_path):
    ws = _workspace(tmp_path / "ws")
    folder = tmp_path / "out"
    (folder / "keep").mkdir(parents=True)
    for target in (folder, tmp_path / "out.jsonl"):
        if target.suffix:
            (tmp_path / "out.manifest.json").mkdir()  # the manifest path is a folder
        for force in (False, True):
            with pytest.raises(InputError, match="is a folder; give the output file") as err:
                export_jsonl(ws, [0, 1], target, force=force)
            assert err.value.field == "out"
    assert (folder / "keep").is_dir() and not (tmp_path / "out.jsonl").exists()
    (tmp_path / "file").write_text("x", encoding="utf-8")
    with pytest.raises(InputError, match="is a file, not a folder"):
        export_jsonl(ws, [0], tmp_path / "file" / "x.jsonl")


# ===== the CLI end to end (every case in one batch of concurrent processes) ====================
@pytest.fixture(scope="module")
def cli_results(tmp_path_factory):
    """Start every CLI case at once; return {case: (exit status, stdout, stderr)}."""
    base = tmp_path_factory.mktemp("cli")
    cases: dict[str, list[str]] = {}

    def ws(name: str) -> str:
        return str(_workspace(base / name).root)

    cases["keys_ansi"] = ["import", str(INPUTS / "keys_ansi.jsonl"), "--workspace",
                          str(base / "k")]
    cases["bad_number"] = ["neighbors", "--workspace", str(base / "k"), "--k", "-3"]
    cases["unknown_command"] = ["embedd"]
    cases["unrecognized"] = ["info", "--workspace", "w", "\x1b[2Jx\u202e"]
    for name in RECIPES:
        cases[name] = ["select", "--workspace", ws(f"r-{name}"), "--name", "s", "--recipe",
                       str(INPUTS / name), "--dry-run"]
    for name in SELECTIONS:
        root = Path(ws(f"s-{name}"))
        (root / "selections").mkdir()
        shutil.copy(INPUTS / name, root / "selections" / name)
        cases[name] = ["export", "--workspace", str(root), "--selection", Path(name).stem,
                       "--out", str(base / f"{name}.jsonl")]
    ifd, stratified = ["--policy", "ifd", "--ratio", "0.5"], ["--policy", "threshold",
                                                              "--stratified", "--budget", "2"]
    for name, target, extra in (("score_wrong_columns.parquet", "scores/ifd.parquet", ifd),
                                ("score_wrong_types.parquet", "scores/ifd.parquet", ifd),
                                ("map_wrong_columns.parquet", "map.parquet", stratified)):
        root = Path(ws(f"p-{name}"))
        (root / "scores").mkdir(exist_ok=True)
        shutil.copy(INPUTS / name, root / target)
        cases[name] = ["select", "--workspace", str(root), "--name", "s", *extra, "--dry-run"]
    m, out = ws("m"), base / "outdir"
    out.mkdir()
    (base / "file.txt").write_text("x", encoding="utf-8")
    cases.update({
        "mapping_huge.json": ["curate", "--workspace", m, "--rating-column", "q", "--mapping",
                              (INPUTS / "mapping_huge.json").read_text()],
        "mapping_150": ["curate", "--workspace", m, "--rating-column", "q", "--mapping",
                        '{"good": 150, "bad": 0}'],
        "workspace_is_a_file": ["info", "--workspace", str(base / "file.txt")],
        "out_is_a_folder": ["export", "--workspace", m, "--all", "--out", str(out), "--force"],
        "ratings_file_is_a_folder": ["curate", "--workspace", m, "--rating-column", "r",
                                     "--ratings-file", str(out)],
        "recipe_is_a_folder": ["select", "--workspace", m, "--name", "s", "--recipe", str(out),
                               "--dry-run"],
        "bound_not_a_number": ["select", "--workspace", m, "--name", "s", "--policy",
                               "threshold", "--min", "r=nan", "--dry-run"]})
    root = Path(ws("a"))
    shutil.copy(INPUTS / "audit_malformed.jsonl", root / "audit.jsonl")
    cases["audit_malformed.jsonl"] = ["select", "--workspace", str(root), "--name", "s",
                                      "--policy", "threshold", "--exclude-rejected", "--dry-run"]
    procs = {k: subprocess.Popen([sys.executable, "-m", "core", *args], cwd=ROOT,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k, args in cases.items()}
    results = {}
    for k, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:  # a hang is this case's failure, not the others'
            proc.kill()
            out, err = proc.communicate()
            err = f"timed out after 240 s\n{err}"
        results[k] = (proc.returncode, out, err)
    return results


CLI_ERRORS = {
    "keys_ansi": r"keys_ansi.jsonl, row 1, field 'output': missing field \(record keys: "
                 r"instruction, \\x1b\]0;pwned\\x07, \\x1b\[2J, a\\u2028b, \\u202etxt.exe, "
                 r"del\\x7f\)",
    "bad_number": r"argument --k: must be at least 1, not '-3' \(see `python -m core "
                  r"neighbors --help`\)",
    "unknown_command": r"invalid choice: 'embedd'",
    "unrecognized": r"unrecognized arguments: \\x1b\[2Jx\\u202e",
    "recipe_wrong_types.yaml": r"recipe_wrong_types.yaml, field 'budget.ratio': must be a "
                               r"number \(or null\), not 'ten'",
    "recipe_ratio_out_of_range.json": r"recipe_ratio_out_of_range.json, field 'budget.ratio': "
                                      r"the ratio must be between 0 and 1, not 5",
    "recipe_list_for_number.yaml": r"recipe_list_for_number.yaml, field 'filters\[1\].min'",
    "selection_handedited.json": r"selection_handedited.json, field 'sample_ids\[2\]': must "
                                 r"be a whole-number sample id, not '3'",
    "selection_out_of_range.json": r"field 'sample_ids\[2\]': sample id 999999 is not in the "
                                   r"workspace \(ids 0..5\)",
    "selection_missing_ids.json": r"selection_missing_ids.json, field 'sample_ids': missing",
    "selection_not_json.json": r"selection_not_json.json: not a readable selection file",
    "score_wrong_columns.parquet": r"scores/ifd.parquet, field 'sample_id': no column "
                                   r"'sample_id'",
    "score_wrong_types.parquet": r"scores/ifd.parquet, field 'ifd': must hold numbers",
    "map_wrong_columns.parquet": r"map.parquet, field 'map.cluster': no column 'cluster' in map",
    "mapping_huge.json": r"field 'q': mapping value for 'good' is class 1000000000, not a "
                         r"class label \(at most 99\)",
    "mapping_150": r"mapping value for 'good' is class 150, not a class label \(at most 99\)",
    "workspace_is_a_file": r"file.txt: not a workspace \(a file, not a folder\)",
    "out_is_a_folder": r"outdir, field 'out': is a folder; give the output file",
    "ratings_file_is_a_folder": r"outdir, field 'ratings_file': is a folder",
    "recipe_is_a_folder": r"outdir: cannot read the recipe \(IsADirectoryError",
    "bound_not_a_number": r"bad --min 'r=nan': use COLUMN=VALUE",
}


@pytest.mark.slow  # cli_results: ~25 CLI processes at once (~20 s on 2 cores)
@pytest.mark.parametrize("case", sorted(CLI_ERRORS))
def test_cli_prints_one_escaped_error_line_and_exits_2(cli_results, case):
    status, out, err = cli_results[case]
    assert status == 2, (case, err)
    assert "Traceback" not in err and not RAW_CONTROL.search(err), err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(CLI_ERRORS[case], lines[0]), lines[0]


@pytest.mark.slow  # cli_results, as above
def test_cli_prints_each_skipped_audit_line_as_one_warning(cli_results):
    status, out, err = cli_results["audit_malformed.jsonl"]
    assert status == 0, err
    lines = err.splitlines()
    assert len(lines) == len(EXPECTED_SKIPS) and not RAW_CONTROL.search(err), err
    for text, (line, why) in zip(lines, EXPECTED_SKIPS.items()):
        assert re.match(rf"warning: \S*audit.jsonl, line {line}: skipped, {re.escape(why)}",
                        text), text
    assert "selected 5 of 6 samples" in out  # sample 2 rejected by line 7, the rest kept


# ===== the corpus ==============================================================================
CORPUS = {  # file -> the test that reads it (the CLI batch reads most of them too)
    "keys_markdown.jsonl": "test_app_shows_keys_file_and_workspace_names_as_text",
    "keys_ansi.jsonl": "test_cli_prints_one_escaped_error_line_and_exits_2",
    "mapping_huge.json": "test_cli_prints_one_escaped_error_line_and_exits_2",
    "audit_malformed.jsonl": "test_malformed_audit_lines_are_skipped_with_a_warning_naming_each",
    **{name: "test_recipe_files_with_wrong_types_name_the_file_and_field" for name in RECIPES},
    **{name: "test_hand_edited_selections_name_the_file_and_field" for name in SELECTIONS},
    **{n: "test_score_and_map_files_with_wrong_columns_or_types_name_file_and_field" for n in
       ("score_wrong_columns.parquet", "score_wrong_types.parquet", "map_wrong_columns.parquet")},
}


def test_every_inputs_corpus_file_is_tested_and_documented():
    present = {p.name for p in INPUTS.iterdir() if p.name != "README.md"}
    assert present == set(CORPUS)
    assert all(callable(globals().get(test)) for test in CORPUS.values())
    readme = (INPUTS / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `([^`]+)` \|[^|]+\|[^|]+\|$", readme, flags=re.M)
    assert sorted(rows) == sorted(present)
    assert len(present) >= 9
