"""The dashboard listens on loopback only, and no code path can run code from a user's file
(pickle, eval/exec, unsafe YAML or torch loads)."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


# ----- loopback only -----------------------------------------------------------------------------
def test_config_binds_the_server_to_loopback():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text("utf-8"))
    assert config["server"]["address"] == "127.0.0.1"
    assert config["server"]["enableXsrfProtection"] is True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _own_addresses() -> list[str]:
    """This machine's non-loopback IPv4/IPv6 addresses (link-local ones need a scope: left out)."""
    out = subprocess.run(["ip", "-o", "addr", "show"], capture_output=True, text=True).stdout
    found = re.findall(r"\binet6? ([0-9a-fA-F.:]+)/\d+", out)
    return [a for a in found if not a.startswith(("127.", "::1", "fe80"))]


def _listening(port: int) -> list[str]:
    """Local addresses of the TCP sockets listening on ``port`` (from ``ss``)."""
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True,
                         text=True, check=True).stdout
    return [line.split()[3].rsplit(":", 1)[0] for line in out.splitlines() if line.strip()]


def test_streamlit_serves_on_loopback_and_not_on_other_addresses(tmp_path):
    port = _free_port()
    # the address comes from .streamlit/config.toml (cwd); only the port is given here
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py",
                             "--server.port", str(port), "--server.headless", "true"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 90
        while True:
            assert proc.poll() is None, "streamlit exited"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.time() < deadline, "streamlit did not start listening"
                time.sleep(0.2)
        assert _listening(port) == ["127.0.0.1"]
        for address in _own_addresses():
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            with socket.socket(family, socket.SOCK_STREAM) as s, \
                    pytest.raises(ConnectionRefusedError):
                s.settimeout(2)
                s.connect((address, port))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# ----- no code execution from data ---------------------------------------------------------------
# (pattern, what makes a match acceptable inside the call, why it is dangerous)
FORBIDDEN = [
    (r"\bimport (c?pickle|dill|shelve|marshal)\b|\bfrom (c?pickle|dill|shelve|marshal) import",
     None, "unpickling runs code from the file"),
    (r"\b(c?pickle|dill|marshal)\.loads?\(", None, "unpickling runs code from the file"),
    (r"\bjoblib\.load\(|\bread_pickle\(", None, "unpickling runs code from the file"),
    (r"allow_pickle\s*=\s*True", None, "np.load with pickles runs code from the file"),
    (r"(?<![\w.])eval\(", None, "eval runs text as code"),
    (r"(?<![\w.])exec\(", None, "exec runs text as code"),
    (r"\btorch\.load\(", r"weights_only\s*=\s*True", "torch.load unpickles unless weights_only"),
    (r"\byaml\.load\(", r"Loader\s*=\s*(yaml\.)?(C?SafeLoader|BaseLoader)",
     "yaml.load without SafeLoader builds arbitrary objects"),
    (r"\byaml\.(unsafe_load|full_load)\(", None, "builds arbitrary objects"),
]
# "path: matched text" -> the reason it is safe there. Empty: nothing needs an exception.
ALLOWED: dict[str, str] = {}


def _call_text(text: str, start: int) -> str:
    """From ``start`` to the parenthesis closing the first one opened (the whole call)."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return text[start:i + 1]
    return text[start:]


def find_unsafe(text: str) -> list[tuple[int, str, str]]:
    """(line, matched text, why) for each dangerous call in Python source ``text``."""
    hits = []
    for pattern, ok_inside, why in FORBIDDEN:
        for m in re.finditer(pattern, text):
            if ok_inside and re.search(ok_inside, _call_text(text, m.start())):
                continue
            hits.append((text.count("\n", 0, m.start()) + 1, m.group(0), why))
    return hits


def test_the_scanner_finds_what_it_should():
    planted = ("import pickle\nx = pickle.loads(b)\nnp.load(p, allow_pickle=True)\n"
               "eval(s)\nexec(code)\ntorch.load(f)\ntorch.load(f,\n  map_location='cpu')\n"
               "yaml.load(t)\nyaml.unsafe_load(t)\npd.read_pickle(p)\n")
    assert len(find_unsafe(planted)) == 10
    safe = ("model.eval()\nnp.load(p, allow_pickle=False)\nyaml.safe_load(t)\n"
            "yaml.load(t, Loader=yaml.SafeLoader)\ntorch.load(f,\n weights_only=True)\n"
            "cursor.exec(q)\n# evaluation(x)\n")
    assert find_unsafe(safe) == []


def test_no_code_runs_from_user_files():
    files = sorted([ROOT / "app.py", *(ROOT / "core").rglob("*.py"),
                    *(ROOT / "components").rglob("*.py"), *(ROOT / "pages").rglob("*.py")])
    assert len(files) > 20
    found = []
    for path in files:
        rel = path.relative_to(ROOT).as_posix()
        for line, match, why in find_unsafe(path.read_text(encoding="utf-8")):
            if f"{rel}: {match}" not in ALLOWED:
                found.append(f"{rel}:{line}: {match} ({why})")
    assert found == []
