"""Bootstrap stability of each class's subset: would another draw of samples pick the same filters?

Each resample redraws a class's fit samples with replacement (counts from a multinomial), takes the
class mean of the per-sample ranking scores, and compares its top k (among positive means, as S_c is
chosen) to S_c by Jaccard. No forward pass is needed: the per-sample scores were kept. An empty S_c (no
filter adds to the class's logit) has no stability to report.
"""

from __future__ import annotations

import numpy as np

from workers.class_filters.ranking import Groups


def bootstrap_jaccard(
    sample_scores: np.ndarray, y: np.ndarray | None, subsets: np.ndarray, resamples: int, seed: int = 0, groups: Groups | None = None
) -> list[float | None]:
    """Per class 0..C-1: mean Jaccard between S_c and the top k of `resamples` bootstrap rankings (None if
    resamples is 0 or S_c is empty). subsets (C, k) pads with -1. With `groups`, sample_scores' rows are
    already in groups.order (and y is not needed)."""
    if resamples <= 0:
        return [None] * len(subsets)
    if groups is None:
        assert y is not None
        groups = Groups.of(y, len(subsets))
        sample_scores = sample_scores[groups.order]
    rng = np.random.default_rng(seed)
    k = subsets.shape[1]
    width = sample_scores.shape[1]
    out: list[float | None] = []
    for c, subset in enumerate(subsets):
        rows = sample_scores[groups.rows(c)]
        counts = rng.multinomial(len(rows), np.full(len(rows), 1.0 / len(rows)), size=resamples)
        means = counts @ rows / len(rows)  # (resamples, D)
        chosen = np.zeros(width, dtype=bool)
        chosen[subset[subset >= 0]] = True
        if not chosen.any():
            out.append(None)
            continue
        tops = _top_k_mask(means, k) & (means > 0)
        both = (tops & chosen).sum(axis=1)
        union = tops.sum(axis=1) + chosen.sum() - both
        out.append(float(np.mean(both / union)))
    return out


def _top_k_mask(values: np.ndarray, k: int) -> np.ndarray:
    """(R, D) bool: each row's k largest values, ties broken by the lower index (a stable descending sort's first k)."""
    k = min(k, values.shape[1])
    kth = -np.partition(-values, k - 1, axis=1)[:, k - 1 : k]
    above = values > kth
    tied = values == kth
    room = k - above.sum(axis=1, keepdims=True)
    return above | (tied & (np.cumsum(tied, axis=1) <= room))
