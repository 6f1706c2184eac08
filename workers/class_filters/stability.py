"""Bootstrap stability of each class's subset: would another draw of samples pick the same filters?

Each resample redraws a class's fit samples with replacement (counts from a multinomial), takes the
class mean of the per-sample ranking scores, and compares its top k (among positive means, as S_c is
chosen) to S_c by Jaccard. No forward pass is needed: the per-sample scores were kept. An empty S_c (no
filter adds to the class's logit) has no stability to report.
"""

from __future__ import annotations

import numpy as np


def bootstrap_jaccard(sample_scores: np.ndarray, y: np.ndarray, subsets: np.ndarray, resamples: int, seed: int = 0, classes: np.ndarray | None = None) -> list[float | None]:
    """Per class: mean Jaccard between S_c and the top k of `resamples` bootstrap rankings (None if resamples
    is 0 or S_c is empty). Rows of `subsets` (padded with -1) follow `classes` (labels; default 0..C-1)."""
    if resamples <= 0:
        return [None] * len(subsets)
    classes = np.arange(len(subsets)) if classes is None else np.asarray(classes)
    rng = np.random.default_rng(seed)
    k = subsets.shape[1]
    width = sample_scores.shape[1]
    grouping = np.argsort(y, kind="stable")
    sorted_y = y[grouping]
    out: list[float | None] = []
    for c, subset in zip(classes, subsets):
        lo, hi = np.searchsorted(sorted_y, c, side="left"), np.searchsorted(sorted_y, c, side="right")
        rows = sample_scores[grouping[lo:hi]]
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
