"""How class-specific each filter is (Leavitt & Morcos's selectivity) and how concentrated samples are (Badola's Ψ).

Leavitt's class selectivity index of a filter is (μ_max − μ_rest) / (μ_max + μ_rest), from its
class-conditional mean activations: μ_max the largest, μ_rest the mean of the others. 0 = the
same for every class, 1 = active for one class only. It assumes non-negative activations
(post-ReLU); a filter with a negative class mean is shifted so its smallest class mean is 0.
The C × D matrix keeps the index with each class in the μ_max role, so its column max is the CSI.

Ψ(0.5) (Badola et al. 2022): the share of the layer a sample needs for half of its activation L1
norm (the size of its "loud set", see ranking.loud_sets), averaged over samples. Small means the
layer's activity sits in a few filters per sample.
"""

from __future__ import annotations

import numpy as np

from workers.class_filters.ranking import LOUD_SHARE, class_means, loud_sets


def class_selectivity(features: np.ndarray, y: np.ndarray, num_classes: int, means: np.ndarray | None = None) -> np.ndarray:
    """(C, D): (μ_c − μ_rest) / (μ_c + μ_rest), μ_rest the mean of the other classes' means (`means`: the
    class means of `features` when already known)."""
    means = class_means(features, y, num_classes) if means is None else means
    means = means - np.minimum(means.min(axis=0, keepdims=True), 0.0)
    rest = (means.sum(axis=0, keepdims=True) - means) / max(num_classes - 1, 1)
    denominator = means + rest
    return np.where(denominator > 0, (means - rest) / np.where(denominator > 0, denominator, 1.0), 0.0)


def selectivity_index(selectivity: np.ndarray) -> np.ndarray:
    """(D,) Leavitt's CSI per filter: the selectivity of its most-preferred class."""
    return selectivity.max(axis=0)


def psi(features: np.ndarray, share: float = LOUD_SHARE, loud: np.ndarray | None = None) -> float:
    """Ψ(share): mean over samples of (filters needed for `share` of the L1 norm) / layer width (`loud`:
    loud_sets(features, share) when already known)."""
    if features.size == 0:
        return 0.0
    return float((loud_sets(features, share) if loud is None else loud).sum(axis=1).mean() / features.shape[1])
