"""The known rater confusion that synthetic DS2 ratings are drawn through, so that a test
(tests/test_ds2.py) or a benchmark (bench/ds2.py) can check how well ``core.scores.ds2``
recovers it. Kept apart from the test module so the benchmark can import it without pytest.
Below it, a plain SimiFeat with DS2's reference variants for tests/test_ds2_variants.py."""

import math

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


# ----- a plain SimiFeat with the reference variants (tests/test_ds2_variants.py) ----------
# Written from docta's ``simi_feat_batch`` / ``count_knn_distribution`` / ``DetectLabel``
# with plain loops and no import of ``core``, so the engine is checked against it, not itself.

SIMIFEAT_STREAM = 3  # the engine's documented seeding: default_rng([seed, 3]) per run


def plain_subsamples(ratings, epochs, fraction, seed):
    """Per epoch: a seeded draw, without replacement, of ``fraction`` of the rated ids."""
    rated = np.flatnonzero(np.asarray(ratings) >= 0)
    size = max(int(fraction * len(rated)), 1)
    rng = np.random.default_rng([seed, SIMIFEAT_STREAM])
    return [np.sort(rng.choice(rated, size, replace=False)) for _ in range(epochs)]


def plain_votes(i, ratings, idx, sims, members, k, self_vote, n_classes):
    """Votes for sample i from its first neighbours in the subsample (k of them, or k − 1
    plus itself with weight 1 − (2 d1 − d2) when ``self_vote``)."""
    votes, distances = [0.0] * n_classes, []
    for j, sim in zip(idx[i], sims[i]):
        if len(distances) == (k - 1 if self_vote else k):
            break
        if j < 0 or j == i or j not in members or ratings[j] < 0:
            continue
        votes[ratings[j]] += max(float(sim), 0.0)
        distances.append(1.0 - float(sim))
    if self_vote:
        d1 = distances[0] if len(distances) > 0 else 1.0
        d2 = distances[1] if len(distances) > 1 else 1.0
        votes[ratings[i]] += max(1.0 - (2.0 * d1 - d2), 0.0)
    return votes


def plain_simifeat(ratings, idx, sims, rho, k=10, epochs=51, fraction=0.9, seed=0,
                   self_vote=False, detector="rank"):
    """noisy_avg, flagged, suggested, confidence per sample (NaN / −1 for missing)."""
    n, n_classes = len(ratings), len(rho)
    sampled, flagged = np.zeros(n), np.zeros(n)
    tally, mass = np.zeros((n, n_classes)), np.zeros((n, n_classes))
    for rows in plain_subsamples(ratings, epochs, fraction, seed):
        members = set(rows.tolist())
        score, top = {}, {}
        for i in rows:
            votes = plain_votes(i, ratings, idx, sims, members, k, self_vote, n_classes)
            mass[i] += votes
            norm = math.sqrt(sum(v * v for v in votes))
            if norm == 0:
                continue
            sampled[i] += 1
            score[i] = -math.log(votes[ratings[i]] / norm + 1e-8)
            top[i] = votes.index(max(votes))
        if detector == "mv":
            noisy = [i for i in score if top[i] != ratings[i]]
        else:
            noisy = []
            for c in range(n_classes):
                members_c = [i for i in score if ratings[i] == c]
                if not members_c:
                    continue
                cut = np.percentile([score[i] for i in members_c], 100 * (1 - rho[c]))
                noisy += [i for i in members_c if score[i] >= cut and score[i] > 1e-6]
        for i in noisy:
            flagged[i] += 1
            tally[i][top[i]] += 1
    noisy_avg = (flagged + 1) / (sampled + 2)
    suggested, confidence = np.full(n, -1), np.full(n, np.nan)
    for i in range(n):
        if ratings[i] < 0:
            continue
        share = mass[i] / max(mass[i].sum(), 1e-12)
        best = max((c for c in range(n_classes) if c != ratings[i]),
                   key=lambda c: (tally[i][c] + 0.5 * share[c], -c))
        suggested[i] = best
        confidence[i] = (tally[i][best] + 1) / (tally[i].sum() + n_classes) * noisy_avg[i]
    rated = np.asarray(ratings) >= 0
    return (np.where(rated, noisy_avg, np.nan), rated & (noisy_avg > 0.5), suggested,
            confidence)


def plain_curated(ratings, flagged, suggested, confidence, min_confidence=0.5):
    """DS2's curated rating: the suggestion where flagged and confident enough."""
    return [s if f and c >= min_confidence else r
            for r, f, s, c in zip(ratings, flagged, suggested, confidence)]


def plain_noise_rates(T, p, histogram):
    """ρ_c = 1 − T[c,c] p_c / P(rated c), clipped to [0.05, 0.95] (NaN for an empty class)."""
    total = sum(histogram)
    out = []
    for c, h in enumerate(histogram):
        if h == 0:
            out.append(float("nan"))
            continue
        clean = min(T[c][c] * p[c] / (h / total), 1.0)
        out.append(min(max(1.0 - clean, 0.05), 0.95))
    return out
