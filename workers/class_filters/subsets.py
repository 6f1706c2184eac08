"""How many filters each class needs, three ways, and how the classes' subsets relate.

- fixed k: the k best filters of the class's ranking (S_c, the subset every other figure uses), among
  those with a positive score: a filter that adds nothing to the class's logit (a head that is all bias)
  is never put in a subset, so S_c may hold fewer than k (padded with -1 in the (C, k) arrays);
- mass coverage: the shortest prefix of the ranking holding `mass` of the class's positive
  contribution (R[c, i] > 0 summed);
- accuracy retention: the shortest prefix whose restricted class-c logit keeps `fraction` of the
  full model's class-c F1 on the eval samples. F1 per class, not overall accuracy: with many
  classes one class's share of the overall accuracy is ~1/C, so "99 % of accuracy" would accept
  an empty subset; F1 counts both the class's misses and the false alarms its logit causes.
"""

from __future__ import annotations

import math

import numpy as np

from workers.class_filters.restriction import Restriction

# Largest p-value of the full model's class-c hits under chance at which a retention size is computed.
SKILL_P = 0.01


def fixed_k(score: np.ndarray, order: np.ndarray, k: int) -> np.ndarray:
    """(C, k) the k best filters per class among those with a positive score, best first; -1 pads the rest."""
    chosen = order[:, :k].copy()
    positive = np.take_along_axis(score, chosen, axis=1) > 0
    chosen[~positive] = -1
    return chosen


def members(subset: np.ndarray) -> np.ndarray:
    """The filters of one padded subset row."""
    return subset[subset >= 0]


def skill_p_values(logits: np.ndarray, y: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """(P,) for each class c: P(at least the observed class-c hits) if the model's class-c predictions were
    independent of the labels, given how many there are (hypergeometric tail); 1 without a hit."""
    predicted = logits.argmax(axis=1)
    n = len(y)
    out = np.ones(len(classes))
    for p, c in enumerate(classes):
        truth, claimed = y == c, predicted == c
        hits = int((truth & claimed).sum())
        if hits:
            out[p] = hypergeometric_tail(hits, n, int(truth.sum()), int(claimed.sum()))
    return out


def hypergeometric_tail(hits: int, population: int, successes: int, draws: int) -> float:
    """P(X ≥ hits) for X ~ Hypergeometric(population, successes, draws), summed in log space."""
    top = min(successes, draws)
    if hits > top:
        return 0.0
    log_total = _log_choose(population, draws)
    terms = [_log_choose(successes, x) + _log_choose(population - successes, draws - x) - log_total for x in range(max(hits, draws - (population - successes)), top + 1)]
    if not terms:
        return 0.0
    peak = max(terms)
    return min(1.0, math.exp(peak) * sum(math.exp(t - peak) for t in terms))


def _log_choose(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def coverage_sizes(contribution: np.ndarray, order: np.ndarray, mass: float) -> np.ndarray:
    """(C,) shortest prefix of each class's `order` whose positive contribution reaches `mass` of the total (0 if none is positive)."""
    positive = np.maximum(np.take_along_axis(contribution, order, axis=1), 0.0)
    running = np.cumsum(positive, axis=1)
    total = running[:, -1:]
    reached = running >= mass * total * (1.0 - 1e-12)
    sizes = reached.argmax(axis=1) + 1
    return np.where(total[:, 0] > 0, sizes, 0)


def f1(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """F1 along the last axis (predicted may carry leading axes); 1 when there is nothing to find or claim."""
    tp = (predicted & truth).sum(axis=-1)
    wrong = (predicted ^ truth).sum(axis=-1)
    denominator = 2 * tp + wrong
    return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 1.0)


def retention_sizes(
    restriction: Restriction, order: np.ndarray, full_logits: np.ndarray, y: np.ndarray, fraction: float, skilled: np.ndarray | None = None
) -> np.ndarray:
    """(P,) shortest prefix of each class's ranking whose restricted logit keeps `fraction` of its F1; -1 where
    `skilled` (P,) bool says the full model has no skill on the class (see the module doc).

    Rows of `order` follow restriction.classes (output indices). Only class c's logit is restricted; every
    other output stays full. An exhaustive restriction scores every size up to the answer (in doubling
    blocks, so a small answer stays cheap); otherwise the size is found by bisection (which assumes the F1
    does not fall as filters are added).
    """
    num_classes, width = order.shape
    rivals = _best_rival(full_logits)
    sizes = np.full(num_classes, -1, dtype=np.int64)
    for p, c in enumerate(restriction.classes):
        if skilled is not None and not skilled[p]:
            continue
        truth = y == c
        target = fraction * float(f1(full_logits[:, c] > rivals[:, c], truth)) - 1e-12

        def keeps(candidates: np.ndarray, c: int = int(c), ranked: np.ndarray = order[p]) -> np.ndarray:
            z = restriction.prefix_logits(c, ranked, candidates)
            return f1(z > rivals[None, :, c], truth[None, :]) >= target

        if restriction.exhaustive:
            block = _FIRST_BLOCK
            while True:
                ok = keeps(np.arange(1, min(block, width) + 1))
                if ok.any() or block >= width:
                    sizes[p] = int(ok.argmax()) + 1 if ok.any() else width
                    break
                block *= 2
            continue
        lo, hi = 1, width
        while lo < hi:
            mid = (lo + hi) // 2
            if keeps(np.array([mid]))[0]:
                hi = mid
            else:
                lo = mid + 1
        sizes[p] = lo
    return sizes


# Prefix sizes scored at once before doubling (exhaustive restrictions).
_FIRST_BLOCK = 32


def _best_rival(logits: np.ndarray) -> np.ndarray:
    """(N, C): for each class, the largest logit among the OTHER classes."""
    if logits.shape[1] < 2:
        return np.full_like(logits, -np.inf)
    top2 = np.argsort(-logits, axis=1, kind="stable")[:, :2]
    best = np.take_along_axis(logits, top2[:, :1], axis=1)
    second = np.take_along_axis(logits, top2[:, 1:2], axis=1)
    return np.where(np.arange(logits.shape[1])[None, :] == top2[:, :1], second, best)


def keep_masks(subsets: np.ndarray, width: int) -> np.ndarray:
    """(C, D) bool: True on each class's subset (padding -1 ignored)."""
    keep = np.zeros((len(subsets), width + 1), dtype=bool)
    np.put_along_axis(keep, np.where(subsets >= 0, subsets, width), True, axis=1)
    return keep[:, :width]


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    sa, sb = set(int(i) for i in a if i >= 0), set(int(i) for i in b if i >= 0)
    union = sa | sb
    return len(sa & sb) / len(union) if union else 1.0


def mean_overlap(subsets: np.ndarray) -> float:
    """Mean Jaccard between the subsets of every pair of classes (0 = disjoint); pairs of empty subsets
    share nothing and are left out."""
    keep = keep_masks(subsets, int(subsets.max()) + 1 if subsets.size and subsets.max() >= 0 else 1).astype(np.float64)
    sizes = keep.sum(axis=1)
    both = keep @ keep.T
    union = sizes[:, None] + sizes[None, :] - both
    upper = np.triu(np.ones_like(both, dtype=bool), k=1) & (union > 0)
    return float(np.mean(both[upper] / union[upper])) if upper.any() else 0.0


def density(subsets: np.ndarray, width: int) -> float:
    """Share of the layer's filters that some class's subset uses."""
    return len(np.unique(subsets[subsets >= 0])) / width if width else 0.0


def compute_saving(subsets: np.ndarray, width: int) -> float:
    """1 − Σ_c |S_c| / (C·D): multiply-adds the decomposed head saves over the full head (for the classes analysed)."""
    return 1.0 - int((subsets >= 0).sum()) / (len(subsets) * width) if width and len(subsets) else 0.0
