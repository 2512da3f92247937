"""``python -m core reflect``: teacher → student → rule, each a resumable workspace step.

``run_reflect`` is what the CLI calls (the app could call the same function); each step
caches and resumes on its own, so a rerun after a kill asks no teacher question twice and
scores no version twice.
"""

from __future__ import annotations

from typing import Sequence

from ..progress import Progress, TqdmProgress
from ..raters.run import add_backend_arguments, check_rater_name, make_backend
from ..workspace import Workspace
from .rule import run_rule
from .student import run_student, student_score_name
from .teacher import run_teacher, versions_name

TEACHER_TOKENS = {"openai": 2048, "local": 256}  # 2,048 as the reference scripts


def run_reflect(ws: Workspace, backend, name: str, sample_ids: Sequence[int] | None = None,
                teacher_progress: Progress | None = None,
                student_progress: Progress | None = None, student: dict | None = None,
                chunk_size: int = 32, retry_errors: bool = True, force: bool = False,
                executor=None) -> dict:
    """Reflect ``sample_ids`` with ``backend``, score the versions with the student
    (``student``: model, template, max_length, dtype overrides; ``executor``: where its
    chunks run, core/executors) and apply the rule.
    Returns ``{"teacher": ..., "student": ..., "rule": ...}`` step results."""
    check_rater_name(name)
    teacher = run_teacher(ws, backend, name, sample_ids, progress=teacher_progress,
                          chunk_size=chunk_size, retry_errors=retry_errors, force=force)
    scored = run_student(ws, name, sample_ids, progress=student_progress, force=force,
                         executor=executor, **(student or {}))
    return {"teacher": teacher, "student": scored, "rule": run_rule(ws, name, force=force)}


def register_cli(subparsers) -> None:
    """Add ``reflect`` to ``python -m core``."""
    from ..args import positive_int, seed
    from ..lm import TEMPLATES

    p = subparsers.add_parser(
        "reflect", help="Selective Reflection-Tuning: a teacher rewrites, the student picks",
        description="Ask a teacher LLM for instruction and response reflection of samples "
                    "(reflect/NAME/versions.parquet, raw answers cached in "
                    "reflect/NAME/responses.jsonl), score the four versions with the "
                    "workspace's IFD model (scores/reflect_NAME.parquet) and keep per sample "
                    "the version Reflection-Tuning's rule picks (reflect/NAME/choice.parquet). "
                    "Export the recycled pairs with `export --selection S --reflected NAME`.")
    p.add_argument("--workspace", required=True, help="workspace folder")
    add_backend_arguments(p, "--teacher", "default 2048 for openai as the reference, 256 for "
                                          "local")
    p.add_argument("--name", default=None,
                   help="teacher run name (letters, digits, - or _; default: the --teacher "
                        "value)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--sample", type=positive_int, metavar="N",
                       help="reflect a random N samples")
    which.add_argument("--limit", type=positive_int, metavar="N",
                       help="reflect the first N samples")
    p.add_argument("--seed", type=seed, default=0, help="seed for --sample (default 0)")
    p.add_argument("--student-model", default=None, metavar="PATH",
                   help="student LM folder (default: the model of scores/ifd.parquet)")
    p.add_argument("--template", choices=TEMPLATES, default=None,
                   help="student prompt template (default: that of scores/ifd.parquet)")
    p.add_argument("--max-length", type=positive_int, default=None,
                   help="student tokens per sequence (default: that of scores/ifd.parquet)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default=None,
                   help="student dtype (default: that of scores/ifd.parquet)")
    p.add_argument("--chunk-size", type=positive_int, default=32,
                   help="samples per resumable chunk (answers are cached one by one)")
    p.add_argument("--no-retry-errors", action="store_true",
                   help="keep failed requests from earlier runs instead of asking again")
    p.add_argument("--force", action="store_true",
                   help="rebuild every file (cached teacher answers are still reused)")
    from ..executors import add_executor_arguments

    add_executor_arguments(p)  # for the student's scoring (the teacher is a web service)
    p.set_defaults(func=_cli_reflect)


def _cli_reflect(args) -> int:
    from ..executors import executor_from_args
    from ..text import terminal_safe

    executor = executor_from_args(args)  # bad flags fail before any teacher request
    ws = Workspace.open(args.workspace)
    name = check_rater_name(args.name or args.teacher)
    backend = make_backend(args.teacher, args, TEACHER_TOKENS["openai"],
                           TEACHER_TOKENS["local"], flag="--teacher")
    ids = ws.pick_sample_ids(args.sample, args.seed, args.limit)
    student = {k: v for k, v in (("model", args.student_model), ("template", args.template),
                                 ("max_length", args.max_length), ("dtype", args.dtype))
               if v is not None}
    with TqdmProgress(f"reflect {name}: teacher", unit="sample") as teacher_bar, \
            TqdmProgress(f"reflect {name}: student", unit="sample") as student_bar:
        results = run_reflect(ws, backend, name, ids, teacher_bar, student_bar, student,
                              chunk_size=args.chunk_size,
                              retry_errors=not args.no_retry_errors, force=args.force,
                              executor=executor)
    versions = results["teacher"].value
    asked = versions[versions["sample_id"].isin(ids)]
    print(terminal_safe(f"{'up to date' if results['teacher'].cached else 'wrote'} "
                        f"{ws.path(versions_name(name))}: {len(versions):,} rows"))
    for key, label in (("q", "instruction reflection (Q*)"), ("a", "response reflection (A*)"),
                       ("qa", "response reflection of Q* (QA*)")):
        counts = asked[f"{key}_status"].value_counts()
        print(terminal_safe(f"  {label}: " + ", ".join(f"{s} {n:,}" for s, n in
                                                         counts.items())))
    run = (results["teacher"].meta or {}).get("last_run", {})
    if not results["teacher"].cached:
        print(f"  requests sent {run.get('requests', 0):,}, answers from cache "
              f"{run.get('cached', 0):,}")
    print(terminal_safe(f"{'up to date' if results['student'].cached else 'wrote'} "
                        f"{ws.path('scores', student_score_name(name) + '.parquet')}"))
    choice = results["rule"].value
    chosen = choice[choice["sample_id"].isin(ids)]["chosen"].value_counts()
    kept = int(chosen.sum())
    print(f"rule (get_select_data.py): keep QA* {int(chosen.get('qa', 0)):,}, A* "
          f"{int(chosen.get('a', 0)):,}, nothing {len(asked) - kept:,} of {len(asked):,}")
    if (asked[[f"{k}_status" for k in ("q", "a", "qa")]] == "request_error").any(axis=None):
        print("  failed requests are kept as errors; rerun the same command to ask again")
    return 0
