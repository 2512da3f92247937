"""Selective Reflection-Tuning (arXiv 2402.10110; docs/methods.md §2a): a teacher LLM
rewrites each pair, the student (the workspace's IFD scoring model) keeps per sample the
version its IFD and r-IFD prefer.

- ``prompts``: the two reflection prompts; ``parse``: reading the bracket answers;
- ``teacher``: the teacher step (backends and response cache of ``core.raters``) →
  ``reflect/<name>/versions.parquet``;
- ``student``: IFD / r-IFD of the four versions → ``scores/reflect_<name>.parquet``;
- ``rule``: ``get_select_data.py``'s rule → ``reflect/<name>/choice.parquet``;
- ``recycle``: the chosen versions in the input's schema (``export --reflected``) and the
  Reflect view's keep / reject decisions;
- ``cli``: ``python -m core reflect`` (all three steps) and ``run_reflect``.
"""
