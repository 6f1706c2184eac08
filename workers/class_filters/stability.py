"""Bootstrap stability of each class's subset: would another draw of samples pick the same filters?

Each resample redraws a class's fit samples with replacement (counts from a multinomial), takes the
class mean of the per-sample ranking scores, and compares its top k to S_c by Jaccard. No forward
pass is needed: the per-sample scores were kept.
"""

from __future__ import annotations

import numpy as np

from workers.class_filters.subsets import jaccard


def bootstrap_jaccard(sample_scores: np.ndarray, y: np.ndarray, subsets: np.ndarray, resamples: int, seed: int = 0) -> list[float | None]:
    """Per class: mean Jaccard between S_c and the top k of `resamples` bootstrap rankings (None if resamples is 0)."""
    if resamples <= 0:
        return [None] * len(subsets)
    rng = np.random.default_rng(seed)
    k = subsets.shape[1]
    out: list[float | None] = []
    for c, subset in enumerate(subsets):
        rows = sample_scores[y == c]
        counts = rng.multinomial(len(rows), np.full(len(rows), 1.0 / len(rows)), size=resamples)
        means = counts @ rows / len(rows)  # (resamples, D)
        tops = np.argsort(-means, axis=1, kind="stable")[:, :k]
        out.append(float(np.mean([jaccard(top, subset) for top in tops])))
    return out
