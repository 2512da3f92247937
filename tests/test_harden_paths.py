"""Issue 13, classes 1 and 7 (and the umask point of 8): Cherrypick deletes only what it owns,
every path built from a typed name stays inside its folder, concurrent saves of one name never
tear a file and never silently replace each other, and workspace files follow the umask.

The corpus is tests/data/bad/paths (README there). Folders are copied to a temporary
directory before use, so a regression deletes a copy, never the corpus.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core import atomic, select
from core.errors import InputError
from core.paths import MAX_NAME, check_name, child_path, show_name
from core.io import import_to_workspace
from core.workspace import Workspace, is_workspace
from ui_fixture import fixture_ws  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path(__file__).resolve().parent / "data" / "bad" / "paths"
ROWS = [{"instruction": f"Say {i}.", "input": "", "output": f"{i}"} for i in range(8)]

NOT_OURS = ["not_a_workspace", "manifest_without_format", "manifest_garbled"]
BAD_NAMES = ["name_dotdot.txt", "name_absolute.txt", "name_hidden.txt", "name_separator.txt",
             "name_backslash.txt", "name_ansi.txt", "name_trailing_newline.txt",
             "name_too_long.txt", "name_reserved_uploads.txt", "name_markdown.txt"]
USED = {*NOT_OURS, *BAD_NAMES, "workspace_with_input", "workspace_is_a_file.txt"}


def corpus_name(file: str) -> str:
    return (CORPUS / file).read_bytes().decode("utf-8")


def copy_case(name: str, tmp_path: Path) -> Path:
    target = tmp_path / name
    (shutil.copytree if (CORPUS / name).is_dir() else shutil.copy)(CORPUS / name, target)
    return target


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def write_jsonl(path: Path, rows=ROWS) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def cli(*args: str, cwd: Path = ROOT, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, **kwargs)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


@pytest.fixture
def ws(tmp_path) -> Workspace:
    ws, _ = import_to_workspace(write_jsonl(tmp_path / "in.jsonl"), tmp_path / "ws")
    return ws


# ----- class 1: destructive operations only on what Cherrypick owns -------------------------
@pytest.mark.parametrize("case", NOT_OURS)
@pytest.mark.parametrize("overwrite", [True, False])
def test_import_refuses_a_folder_that_is_not_a_workspace(case, overwrite, tmp_path):
    folder = copy_case(case, tmp_path)
    before = snapshot(folder)
    data = write_jsonl(tmp_path / "data.jsonl")
    proc = cli("import", str(data), "--workspace", str(folder),
               *(["--overwrite"] if overwrite else []))
    line = one_line_error(proc)
    assert str(folder) in line and "not a Cherrypick workspace" in line
    assert "nothing was deleted" in line
    assert snapshot(folder) == before and data.is_file()


def test_is_workspace_needs_a_readable_manifest_with_a_format(tmp_path, ws):
    assert is_workspace(ws.root)
    assert is_workspace(CORPUS / "workspace_with_input")
    for case in NOT_OURS:
        assert not is_workspace(CORPUS / case), case
    assert not is_workspace(tmp_path / "missing")


def test_overwrite_never_deletes_the_input_inside_the_workspace(tmp_path):
    folder = copy_case("workspace_with_input", tmp_path)
    before = snapshot(folder)
    proc = cli("import", str(folder / "data.jsonl"), "--workspace", str(folder), "--overwrite")
    line = one_line_error(proc)
    assert "is inside the workspace it would replace; nothing was deleted" in line
    assert snapshot(folder) == before


def test_workspace_path_that_is_a_file_is_refused(tmp_path):
    target = copy_case("workspace_is_a_file.txt", tmp_path)
    before = target.read_bytes()
    for extra in ([], ["--overwrite"]):
        line = one_line_error(cli("import", str(write_jsonl(tmp_path / "d.jsonl")),
                                  "--workspace", str(target), *extra))
        assert "the workspace path is a file, not a folder" in line
    assert target.read_bytes() == before


def test_overwrite_still_replaces_a_workspace_and_an_empty_folder_imports(tmp_path, ws):
    (ws.path("scores")).mkdir()
    (ws.path("scores", "old.parquet")).write_bytes(b"old result")
    fewer = write_jsonl(tmp_path / "fewer.jsonl", ROWS[:3])
    with pytest.raises(InputError, match="already exists"):
        import_to_workspace(fewer, ws.root)
    outside = tmp_path / "outside"  # a link in the workspace: the link goes, never its target
    outside.mkdir()
    (outside / "mine.txt").write_text("mine")
    ws.path("linked").symlink_to(outside, target_is_directory=True)
    again, _ = import_to_workspace(fewer, ws.root, overwrite=True)
    assert len(again) == 3 and not again.path("scores").exists()
    assert not again.path("linked").exists() and (outside / "mine.txt").read_text() == "mine"
    empty = tmp_path / "empty"  # generated case: git cannot hold an empty folder
    for overwrite in (False, True):
        shutil.rmtree(empty, ignore_errors=True)
        empty.mkdir()
        assert len(import_to_workspace(fewer, empty, overwrite=overwrite)[0]) == 3


# ----- class 1: one helper for typed names ---------------------------------------------------
@pytest.mark.parametrize("file", BAD_NAMES)
def test_every_bad_name_is_refused_on_one_line_with_the_name_visible(file, tmp_path):
    name = corpus_name(file)
    with pytest.raises(InputError) as err:
        child_path(tmp_path, name, ".json", what="selection name")
    message = str(err.value)
    assert message.startswith("bad selection name ") and "\n" not in message
    assert "\x1b" not in message and len(message) < 300
    shown = repr(name) if len(name) <= 60 else f"{name[:60]!r}… ({len(name)} characters)"
    assert shown in message
    assert list(tmp_path.iterdir()) == []


def test_good_names_pass_and_stay_inside(tmp_path):
    for name in ("top5", "ds2-k.1_000", "A" * MAX_NAME):
        assert check_name(name) == name
        assert child_path(tmp_path, name, ".json").parent == tmp_path
    for name in ("a..b", "A" * (MAX_NAME + 1), "", "é", "a b", 5):
        with pytest.raises(InputError):
            check_name(name)


def test_select_has_no_name_check_of_its_own_and_refuses_what_paths_refuses(ws, tmp_path):
    assert not hasattr(select, "check_name")  # the twin is gone: core.paths decides
    sel = select.run_selection(ws, select.make_recipe("threshold"))
    for name in ("ok\n", "a..b", corpus_name("name_ansi.txt")):
        with pytest.raises(InputError, match="bad selection name"):
            select.save_selection(ws, name, sel)
        with pytest.raises(InputError, match="bad selection name"):
            select.load_selection(ws, name)
    assert not ws.path("selections").exists()
    line = one_line_error(cli("select", "--workspace", str(ws.root), "--name",
                              corpus_name("name_dotdot.txt"), "--policy", "threshold"))
    assert "bad selection name '../x'" in line and not (ws.root / "x.json").exists()


def test_a_symlink_cannot_carry_a_selection_outside(ws, tmp_path):
    outside = tmp_path / "outside.json"  # generated case: the corpus cannot hold a link
    outside.write_text('{"sample_ids": [1]}')
    ws.path("selections").mkdir()
    ws.path("selections", "evil.json").symlink_to(outside)
    sel = select.run_selection(ws, select.make_recipe("threshold"))
    for call in (lambda: select.load_selection(ws, "evil"),
                 lambda: select.save_selection(ws, "evil", sel, force=True)):
        with pytest.raises(InputError, match="points outside .*symbolic link"):
            call()
    assert outside.read_text() == '{"sample_ids": [1]}'


def test_list_selections_skips_files_no_name_could_make(ws):
    folder = ws.path("selections")
    folder.mkdir()
    for stem in ("good", ".hidden", "a b", "-dash"):
        (folder / f"{stem}.json").write_text("{}")
    assert select.list_selections(ws) == ["good"]


# ----- class 7: concurrent saves -------------------------------------------------------------
@pytest.mark.slow  # several CLI processes (~3 s)
def test_cli_second_save_of_a_name_needs_force(ws):
    args = ["select", "--workspace", str(ws.root), "--name", "mine", "--policy", "threshold"]
    assert cli(*args, "--budget", "3").returncode == 0
    saved = ws.path("selections", "mine.json")
    first = saved.read_bytes()
    line = one_line_error(cli(*args, "--budget", "5"))
    assert "a selection named 'mine' already exists" in line and "--force" in line
    assert saved.read_bytes() == first
    assert cli(*args, "--budget", "5", "--force").returncode == 0
    assert len(json.loads(saved.read_text())["sample_ids"]) == 5


RACER = r"""
import json, sys, time
from pathlib import Path
from core import atomic, select
from core.errors import InputError
from core.workspace import Workspace

root, who, n, names, force = sys.argv[1:6]
ws = Workspace.open(root)
sel = select.run_selection(ws, select.make_recipe("threshold", budget=int(n)))
Path(root, f"ready-{who}").touch()
while not Path(root, "go").exists():
    time.sleep(0.0005)
won = []
for name in names.split(","):
    try:
        select.save_selection(ws, name, sel, **({"force": True} if force == "1" else {}))
        won.append(name)
    except InputError as err:
        assert "already exists" in str(err) and "\n" not in str(err), str(err)
print(json.dumps(won))
"""


def race(ws: Workspace, names: list[str], force: bool, budgets=(2, 5)) -> list[list[str]]:
    """Start one process per budget, release them at once, return what each saved."""
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(ws.root), str(i), str(n),
                               ",".join(names), "1" if force else "0"], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
             for i, n in enumerate(budgets)]
    deadline = time.time() + 120
    while not all(ws.path(f"ready-{i}").exists() for i in range(len(budgets))):
        assert time.time() < deadline and all(p.poll() is None for p in procs), \
            [p.communicate() for p in procs]
        time.sleep(0.01)
    ws.path("go").touch()
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    return [json.loads(out) for out, _ in outs]


def test_two_processes_saving_one_name_exactly_one_wins(ws):
    names = [f"race{i}" for i in range(40)]
    won = race(ws, names, force=False)
    budgets = (2, 5)
    for name in names:
        winners = [i for i, names_won in enumerate(won) if name in names_won]
        assert len(winners) == 1, (name, won)
        body = json.loads(ws.path("selections", f"{name}.json").read_text())
        assert len(body["sample_ids"]) == budgets[winners[0]]  # the winner's own content
    assert not [p for p in ws.path("selections").iterdir() if not p.name.endswith(".json")]


def test_two_cli_runs_on_one_name_one_error(ws):
    args = ["select", "--workspace", str(ws.root), "--name", "same", "--policy", "threshold"]
    procs = [subprocess.Popen([sys.executable, "-m", "core", *args, "--budget", str(n)],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
             for n in (2, 5)]
    outs = [p.communicate(timeout=120) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outs
    loser = outs[[p.returncode for p in procs].index(2)][1].strip().splitlines()
    assert len(loser) == 1 and "already exists" in loser[0]
    json.loads(ws.path("selections", "same.json").read_text())


def test_forced_saves_racing_never_leave_a_torn_file(ws):
    names = ["hot"] * 60
    race(ws, names, force=True)
    body = json.loads(ws.path("selections", "hot.json").read_text())
    assert len(body["sample_ids"]) in (2, 5)
    assert [p.name for p in ws.path("selections").iterdir()] == ["hot.json"]


# ----- the app: names, uploads, two tabs -----------------------------------------------------
APP = str(ROOT / "app.py")


def open_app(tmp_path: Path, monkeypatch, workspace: Path, page: str):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("CHERRYPICK_WORKSPACE", str(workspace))
    monkeypatch.setenv("CHERRYPICK_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CHERRYPICK_DATA", str(tmp_path / "no-data"))
    at = AppTest.from_file(APP, default_timeout=90)
    at.session_state["workspace_root"] = str(workspace)
    at.switch_page(page)
    at.run()
    assert not at.exception, at.exception
    return at


@pytest.fixture
def app_ws(fixture_ws, tmp_path) -> Workspace:
    """A private copy of the UI fixture workspace, without saved selections or exports."""
    root = tmp_path / "ws"
    shutil.copytree(fixture_ws.root, root)
    for leftover in ("selections", "exports", "audit.jsonl"):
        shutil.rmtree(root / leftover, ignore_errors=True)
    return Workspace.open(root)


def assert_name_shown_as_code_only(at, name: str) -> None:
    assert at.error and not at.exception
    assert all(name not in e.value for e in at.error)  # never Markdown
    assert show_name(name) in [c.value for c in at.code]  # repr, cut after 60 characters


@pytest.mark.parametrize("typed", ["name_dotdot.txt", "absolute"])
def test_app_export_name_never_builds_a_path_outside_exports(typed, app_ws, monkeypatch,
                                                               tmp_path):
    name = corpus_name(typed) if typed != "absolute" else str(tmp_path / "elsewhere" / "x")
    before = snapshot(tmp_path)
    at = open_app(tmp_path, monkeypatch, app_ws.root, "pages/select_export.py")
    at.text_input(key="sel_name").set_value(name).run()
    at.button(key="sel_export").click().run()
    assert_name_shown_as_code_only(at, name)
    assert snapshot(tmp_path) == before


def test_app_selection_name_with_markdown_is_refused_as_plain_text(app_ws, monkeypatch,
                                                                     tmp_path):
    name = corpus_name("name_markdown.txt")
    at = open_app(tmp_path, monkeypatch, app_ws.root, "pages/select_export.py")
    at.text_input(key="sel_name").set_value(name).run()
    at.button(key="sel_save").click().run()
    assert_name_shown_as_code_only(at, name)
    assert not app_ws.path("selections").exists()


@pytest.mark.slow  # two AppTest sessions (~3 s)
def test_two_app_tabs_saving_one_name_ask_before_replacing(app_ws, monkeypatch, tmp_path):
    tabs = [open_app(tmp_path, monkeypatch, app_ws.root, "pages/select_export.py")
            for _ in range(2)]
    tabs[1].slider(key="sel_ratio").set_value(5.0).run()
    for tab in tabs:  # both type the name before either saves
        tab.text_input(key="sel_name").set_value("shared").run()
    tabs[0].button(key="sel_save").click().run()
    saved = app_ws.path("selections", "shared.json")
    first = saved.read_bytes()
    tabs[1].button(key="sel_save").click().run()
    assert any("already exists" in e.value for e in tabs[1].error)
    assert saved.read_bytes() == first
    tabs[1].checkbox(key="sel_replace::shared").check().run()
    tabs[1].button(key="sel_save").click().run()
    assert not tabs[1].error and not tabs[1].exception
    assert len(json.loads(saved.read_text())["sample_ids"]) == int(len(app_ws) * 0.05)


def upload(at, name: str, payload: bytes) -> None:
    at.file_uploader(key="data_upload").set_value((name, payload, "application/jsonl")).run()
    assert not at.exception, at.exception


@pytest.mark.parametrize("typed", ["name_reserved_uploads.txt", "name_dotdot.txt"])
def test_app_refuses_a_bad_workspace_name_and_replace_keeps_uploads(typed, fixture_ws,
                                                                      monkeypatch, tmp_path):
    at = open_app(tmp_path, monkeypatch, fixture_ws.root, "pages/data.py")
    upload(at, "mini.jsonl", write_jsonl(tmp_path / "m.jsonl").read_bytes())
    home = tmp_path / "home"
    before = snapshot(home)
    assert before  # the upload is stored under the workspaces folder
    name = corpus_name(typed)
    at.text_input(key="data_ws_mini").set_value(name).run()
    at.checkbox(key="data_overwrite").check().run()
    at.button(key="data_import").click().run()
    assert_name_shown_as_code_only(at, name)
    assert snapshot(home) == before and not (tmp_path / "x").exists()


def test_app_reupload_of_a_name_uses_the_new_content(fixture_ws, monkeypatch, tmp_path):
    at = open_app(tmp_path, monkeypatch, fixture_ws.root, "pages/data.py")
    old = [{"instruction": "Old question?", "input": "", "output": "A"}]
    new = [{"instruction": "New question?", "input": "", "output": "B"}]  # same byte size
    payloads = [write_jsonl(tmp_path / f"{i}.jsonl", rows).read_bytes()
                for i, rows in enumerate((old, new))]
    assert len(payloads[0]) == len(payloads[1])
    for target, payload in (("first", payloads[0]), ("second", payloads[1])):
        upload(at, "same.jsonl", payload)
        at.text_input(key="data_ws_same").set_value(target).run()
        at.button(key="data_import").click().run()
        assert not at.error and not at.exception, [e.value for e in at.error]
    got = [Workspace.open(tmp_path / "home" / t).samples()["instruction"].tolist()
           for t in ("first", "second")]
    assert got == [["Old question?"], ["New question?"]]
    uploads = sorted(p.read_bytes() for p in (tmp_path / "home" / "_uploads").rglob("*.jsonl"))
    assert uploads == sorted(payloads)  # both kept, neither overwritten
    upload(at, "same.jsonl", payloads[1])  # the same content again is reused, not copied
    assert len(list((tmp_path / "home" / "_uploads").rglob("*.jsonl"))) == 2


def test_exclusive_create_works_without_hard_links(tmp_path, monkeypatch):
    def no_links(*args):
        raise OSError(errno.EPERM, "hard links not supported")

    monkeypatch.setattr(os, "link", no_links)
    target = tmp_path / "sel.json"
    atomic.write_json(target, {"a": 1}, replace=False)
    with pytest.raises(FileExistsError):
        atomic.write_json(target, {"a": 2}, replace=False)
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["sel.json"]  # no temp file left


# ----- umask ---------------------------------------------------------------------------------
UMASK = r"""
import os, stat, sys
os.umask(int(sys.argv[1], 8))
from core import atomic
atomic.write_json(sys.argv[2], {"a": 1})
atomic.write_json(sys.argv[2] + ".new", {"a": 1}, replace=False)
modes = [stat.S_IMODE(os.stat(p).st_mode) for p in (sys.argv[2], sys.argv[2] + ".new")]
print(" ".join(oct(m) for m in modes), oct(os.umask(0)))
"""


@pytest.mark.parametrize("mask,mode", [("027", 0o640), ("002", 0o664), ("077", 0o600)])
def test_atomic_writes_get_the_users_umask(mask, mode, tmp_path):
    out = subprocess.run([sys.executable, "-c", UMASK, mask, str(tmp_path / "f.json")],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert out == [oct(mode), oct(mode), oct(int(mask, 8))]  # and the umask is unchanged


def test_imported_workspace_files_are_readable_by_the_group(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl")
    assert cli("import", str(data), "--workspace", str(tmp_path / "w"), umask=0o022
               ).returncode == 0
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "w").iterdir()}
    assert modes and all(m == 0o644 for m in modes.values()), modes


# ----- the corpus ----------------------------------------------------------------------------
def test_every_corpus_file_is_tested_and_documented():
    present = {p.name for p in CORPUS.iterdir() if p.name != "README.md"}
    assert present == USED
    readme = (CORPUS / "README.md").read_text(encoding="utf-8")
    for name in present:
        shown = f"`{name}/`" if (CORPUS / name).is_dir() else f"`{name}`"
        assert shown in readme, name
