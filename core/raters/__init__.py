"""LLM raters and teachers: the backends that answer chat requests (``backends``: an
OpenAI-compatible API or the local LM), the response cache every step that asks them goes
through (``cache``), the DS2 rating prompt and its parser (``prompt``), and the ``rate`` step
(``run``). A second step with another prompt (``reflect``, issue 12) reuses ``backends`` and
``cache.ask_cached`` as they are. docs/methods.md §3; docs/architecture.md.
"""
