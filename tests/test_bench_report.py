"""bench/report.py: a partial rerun (``run_all.py --stages app``) on a fresh checkout, whose
bench/.cache/results.json holds only that stage, rewrites only that stage's figures in
RESULTS.md and keeps every other stage's row, section and growth rows."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import report  # noqa: E402


def _render(stage: str):
    return lambda runs: [f"## Section of {stage}", "", f"{stage}: {len(runs)} runs, "
                         + ", ".join(str(r["size"]) for r in runs)]


def _entry(date: str, *sizes: int) -> dict:
    runs = [{"size": n, "load_before": 0.5, "load_after": 1.0, "peak_rss_mib": n / 10,
             "series": {"paint": n / 1000}} for n in sizes]
    return {"mode": "full", "date": date, "cpu": f"CPU of {date}", "wall_s": 9.0,
            "note": f"run of {date}", "runs": runs}


def test_a_partial_rerun_keeps_the_other_stages(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "RESULTS_MD", tmp_path / "RESULTS.md")
    render = {s: _render(s) for s in report.STAGES}
    report.write_report({"stages": {"app": _entry("day 1", 5, 50),
                                    "ray": _entry("day 1", 32, 96)}}, render)
    first = (tmp_path / "RESULTS.md").read_text()
    assert "ray: 2 runs, 32, 96" in first and "| ray | paint | 32, 96 |" in first

    report.write_report({"stages": {"app": _entry("day 2", 200)}}, render)  # fresh checkout
    text = (tmp_path / "RESULTS.md").read_text()
    lines = text.splitlines()
    assert "| app | CPU of day 2 | full | day 2 |" in text
    assert "| ray | CPU of day 1 | full | day 1 | 9 s | 0.5→1.0, 0.5→1.0 | run of day 1 |" \
        in lines
    assert "app: 1 runs, 200" in text and "app: 2 runs" not in text
    assert "## Section of ray" in text and "ray: 2 runs, 32, 96" in text
    assert [line for line in lines if line.startswith("| ray | paint |")] == \
        [line for line in first.splitlines() if line.startswith("| ray | paint |")]
    assert text.count("## Section of ray") == 1 and text.count("## Growth") == 1
    assert text.index("## Section of app") < text.index("## Section of ray")  # STAGES order

    report.write_report({"stages": {"app": _entry("day 3", 200)}}, render)  # and again
    assert (tmp_path / "RESULTS.md").read_text().replace("day 3", "day 2") == text


def test_a_kept_row_from_before_the_cpu_column_says_its_cpu_is_unknown(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "RESULTS_MD", tmp_path / "RESULTS.md")
    render = {s: _render(s) for s in report.STAGES}
    report.write_report({"stages": {"app": _entry("day 1", 5), "ray": _entry("day 1", 3)}},
                        render)
    old = (tmp_path / "RESULTS.md").read_text().replace("| ray | CPU of day 1 | ", "| ray | ")
    (tmp_path / "RESULTS.md").write_text(old)  # as an older RESULTS.md wrote it
    report.write_report({"stages": {"app": _entry("day 2", 5)}}, render)
    rows = [r for r in (tmp_path / "RESULTS.md").read_text().splitlines()
            if r.startswith("| ray | ")]
    assert rows[0].startswith("| ray | – | full | day 1 |") and rows[0].count("|") == 8
