"""How filters are ranked per class: by their share of the class logit (default) or Badola's frequency.

Both rankings are class means of a per-sample score matrix (N × D), so bootstrap stability can
resample samples and re-rank without another forward pass:
- contribution: each sample's per-filter share of its own class logit (exact split or grad×act);
- frequency (Badola et al. 2022): how often a filter is in a sample's "loud set", the fewest
  filters whose |activation| makes up half of the sample's L1 norm. It reads activation size
  only, so filters that are loud for every class win it: on planted data it finds none of the
  class subsets, which is why it is an option and never the default.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CONTRIBUTION = "contribution"
FREQUENCY = "frequency"
RANKINGS = (CONTRIBUTION, FREQUENCY)

# Share of a sample's L1 norm its loud set must cover (Badola's Ψ threshold).
LOUD_SHARE = 0.5


@dataclass(frozen=True)
class Groups:
    """Samples sorted by class (stably: each class keeps its samples' order). Arrays whose rows are taken in
    `order` once give every class mean with one reduceat and no further copy."""

    order: np.ndarray
    counts: np.ndarray

    @classmethod
    def of(cls, y: np.ndarray, num_classes: int) -> "Groups":
        return cls(np.argsort(y, kind="stable"), np.bincount(y, minlength=num_classes))

    @property
    def starts(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.counts)[:-1]])

    def rows(self, c: int) -> slice:
        start = int(self.starts[c])
        return slice(start, start + int(self.counts[c]))

    def means(self, grouped: np.ndarray) -> np.ndarray:
        """(C, D): the mean row of each class of `grouped` (rows in `order`); zeros for a class without
        samples. Boolean rows are summed as integers (exact, and an eighth of the memory traffic)."""
        sums = np.zeros((len(self.counts), grouped.shape[1]))
        present = np.flatnonzero(self.counts)
        if len(present):
            starts = self.starts[present]
            if grouped.dtype == bool:
                sums[present] = np.add.reduceat(grouped.view(np.uint8), starts, axis=0, dtype=np.int64)
            else:
                sums[present] = np.add.reduceat(grouped, starts, axis=0)
        return sums / np.maximum(self.counts, 1)[:, None]


def class_means(per_sample: np.ndarray, y: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, D): the mean row of each class (zeros for a class without samples)."""
    groups = Groups.of(y, num_classes)
    return groups.means(per_sample[groups.order])


# Samples per block of loud_sets: its temporaries stay small and in cache.
_LOUD_BLOCK = 256


def loud_sets(features: np.ndarray, share: float = LOUD_SHARE) -> np.ndarray:
    """(N, D) bool: per sample, the fewest filters whose |activation| sums to `share` of its L1 norm (the
    largest first; among equal magnitudes at the boundary, the lowest indices)."""
    out = np.empty(features.shape, dtype=bool)
    for start in range(0, len(features), _LOUD_BLOCK):
        out[start : start + _LOUD_BLOCK] = _loud_block(features[start : start + _LOUD_BLOCK], share)
    return out


def _loud_block(features: np.ndarray, share: float) -> np.ndarray:
    magnitude = np.abs(features)
    descending = np.sort(magnitude, axis=1)[:, ::-1]
    cumulative = np.cumsum(descending, axis=1)
    total = cumulative[:, -1:]
    needed = np.where(total[:, 0] > 0, (cumulative < share * total).sum(axis=1) + 1, 0)
    needed = np.minimum(needed, features.shape[1])
    # The smallest magnitude the loud set holds; all larger ones are in, ties fill up in index order.
    threshold = np.take_along_axis(descending, np.maximum(needed - 1, 0)[:, None], axis=1)
    above = magnitude > threshold
    tied = magnitude == threshold
    room = needed - above.sum(axis=1)
    loud = above | tied
    crowded = np.flatnonzero(tied.sum(axis=1) > room)  # more equal magnitudes than places left
    if len(crowded):
        loud[crowded] = above[crowded] | (tied[crowded] & (np.cumsum(tied[crowded], axis=1) <= room[crowded, None]))
    loud[needed == 0] = False
    return loud


def frequency_sample_scores(features: np.ndarray, y: np.ndarray, num_classes: int, loud: np.ndarray | None = None) -> np.ndarray:
    """Per-sample scores whose class means rank by loud-set frequency, ties broken by mean |activation|.

    The tie-break term is below half a frequency step (1 / n_c), so it never reorders frequencies.
    """
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    magnitude = np.abs(features)
    scale = float(magnitude.max()) or 1.0
    return (loud_sets(features) if loud is None else loud) + (0.5 / counts[y])[:, None] * (magnitude / scale)


def frequency(features: np.ndarray, y: np.ndarray, num_classes: int, loud: np.ndarray | None = None) -> np.ndarray:
    """(C, D): share of class-c samples whose loud set holds filter i (`loud`: loud_sets(features) if known)."""
    return class_means(loud_sets(features) if loud is None else loud, y, num_classes)


def sample_scores(kind: str, features: np.ndarray, contributions: np.ndarray, y: np.ndarray, num_classes: int, loud: np.ndarray | None = None) -> np.ndarray:
    """The per-sample matrix whose class means are the ranking score of `kind`."""
    if kind == CONTRIBUTION:
        return contributions
    if kind == FREQUENCY:
        return frequency_sample_scores(features, y, num_classes, loud)
    raise ValueError(f"unknown ranking {kind!r}; one of {RANKINGS}")


def order(score: np.ndarray) -> np.ndarray:
    """(C, D) filter indices per class, highest score first (stable: ties keep index order)."""
    return np.argsort(-score, axis=1, kind="stable")


def top_k(score: np.ndarray, k: int) -> np.ndarray:
    """(C, k) the k best filters per class."""
    return order(score)[:, :k]
