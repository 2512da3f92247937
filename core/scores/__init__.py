"""Per-sample scores computed from the workspace: DS2 curation of LLM ratings (``ratings``:
rating values → classes; ``hoc``: the rater's noise transition matrix; ``simifeat``:
mis-rating detection, long-tail score, neighbour evidence; ``ds2``: the whole curation and the
``curate`` step), and the LM scores IFD, r-IFD and RECOST. What each computes is
docs/methods.md; how a step runs is docs/architecture.md.
"""
