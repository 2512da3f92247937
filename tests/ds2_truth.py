"""The known rater confusion that synthetic DS2 ratings are drawn through, so that a test
(tests/test_ds2.py) or a benchmark (bench/ds2.py) can check how well ``core.scores.ds2``
recovers it. Kept apart from the test module so the benchmark can import it without pytest."""

import numpy as np

# A plausible LLM-rater confusion on the 6-class DS2 scale (rows: true class, columns: rated
# class): mostly right, often off by one.
TRUE_T = np.array([
    [0.70, 0.20, 0.06, 0.02, 0.01, 0.01],
    [0.12, 0.68, 0.14, 0.04, 0.01, 0.01],
    [0.03, 0.12, 0.68, 0.13, 0.03, 0.01],
    [0.01, 0.03, 0.13, 0.68, 0.12, 0.03],
    [0.01, 0.01, 0.04, 0.14, 0.68, 0.12],
    [0.01, 0.01, 0.02, 0.06, 0.20, 0.70],
])
