"""Mutual information between each filter's activation and 1[y = c], and CSG's MIS, by two estimators.

- binned: per-filter quantile bins, a plug-in estimate from joint counts, in bits. Fast and vectorised
  over classes × filters; it is biased upward by about (bins − 1) / (2 N ln 2) bits, which is what the
  shuffled-label baseline shows.
- knn: Ross (2014)'s nearest-neighbour estimator for a continuous variable and a discrete one, in nats:
  the estimator behind scikit-learn's `mutual_info_classif` that CSG (Liang et al. 2020) used, so its
  MIS is the figure they report.

MIS = mean over filters of max over classes of MI: high when filters specialise in classes. Both MIS are
reported, each with its shuffled-label baseline and named with its estimator and unit.

Speed: the work that does not depend on the labels (quantile bins; sorting the jittered values) is done
once in `Prepared` and shared by the real and the shuffled labels. The kNN estimator is computed for every
class at once in O(N) per filter after the sort (see _knn_fast); rows with tied values, and the rare
positions whose neighbourhood it cannot settle, fall back to the per-class computation (_knn_class), so
the result is the same as the per-class one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

BINNED = "binned"
KNN = "knn"
ESTIMATORS = (BINNED, KNN)

# Neighbours for the kNN estimator (scikit-learn's default).
KNN_NEIGHBORS = 3
# Values per chunk of the kNN estimator (filters × samples): keeps each chunk's arrays in cache.
_KNN_CHUNK = 2**15
# Up to this many classes, each class and its rest are counted as two groups (the rest is not shared enough).
_FEW_CLASSES = 4
# Nearest entries (both sides, in distance order) the fast path looks at per position.
_ENTRIES = 2 * KNN_NEIGHBORS


def default_bins(n: int) -> int:
    """About n^(1/3) bins, between 4 and 16: enough resolution, bias kept near 1/(N^(2/3))."""
    return int(np.clip(round(n ** (1.0 / 3.0)), 4, 16))


def quantile_bins(features: np.ndarray, bins: int) -> np.ndarray:
    """(N, D) bin index per value; equal values always share a bin (a dead filter has one bin)."""
    edges = np.quantile(features, np.linspace(0.0, 1.0, bins + 1)[1:-1], axis=0)
    out = np.empty(features.shape, dtype=np.int64)
    for i in range(features.shape[1]):
        out[:, i] = np.searchsorted(edges[:, i], features[:, i], side="right")
    return out


def sorted_quantiles(ordered: np.ndarray, q: np.ndarray) -> np.ndarray:
    """(Q, R) np.quantile(rows, q, axis=1) ("linear") of rows already sorted, with numpy's own arithmetic (its
    virtual index, floor, and two-sided lerp), so the edges are the same floats; a sort is cheaper than
    numpy's partition at many quantiles."""
    n = ordered.shape[1]
    virtual = (n - 1) * q
    previous = np.floor(virtual)
    following = previous + 1
    previous_at = previous.astype(np.intp)
    following_at = following.astype(np.intp)
    previous_at[virtual >= n - 1] = -1
    following_at[virtual >= n - 1] = -1
    previous_at[virtual < 0] = 0
    following_at[virtual < 0] = 0
    gamma = np.asanyarray(virtual - previous, dtype=virtual.dtype).reshape(-1, 1)
    a, b = ordered[:, previous_at].T, ordered[:, following_at].T
    difference = b - a
    out = np.add(a, difference * gamma)
    np.subtract(b, difference * (1 - gamma), out=out, where=np.broadcast_to(gamma >= 0.5, out.shape))
    return out


def filter_bins(by_filter: np.ndarray, bins: int) -> np.ndarray:
    """(D, N) bin index of each filter's values (rows), as quantile_bins gives for the transposed matrix:
    each filter's quantiles, a value's bin the number of them at or below it."""
    edges = sorted_quantiles(np.sort(by_filter, axis=1), np.linspace(0.0, 1.0, bins + 1)[1:-1])  # (B - 1, D)
    out = np.zeros(by_filter.shape, dtype=np.int8 if bins < 128 else np.int64)
    for edge in edges:
        out += by_filter >= edge[:, None]
    return out


# Filters per block of the binned estimator: its temporaries stay small and in cache.
_BIN_BLOCK = 32


@dataclass
class Prepared:
    """The label-independent part of both estimators for one (N, D) feature matrix.

    bin_index: (D, N) quantile bin of each value, filter by filter (binned estimator).
    knn: the jittered, standardised values sorted per filter, with the sort order (kNN); made when a kNN
    estimate is first asked for.
    """

    features: np.ndarray
    bins: int
    bin_index: np.ndarray
    seed: int = 0
    _knn: "_Sorted | None" = None

    @property
    def knn(self) -> "_Sorted":
        if self._knn is None:
            self._knn = _Sorted.of(self.features, self.seed)
        return self._knn


def prepare(features: np.ndarray, seed: int = 0, bins: int | None = None) -> Prepared:
    """The work shared by every labelling of `features` (N, D)."""
    features = np.asarray(features, dtype=np.float64)
    n, d = features.shape
    bins = bins or default_bins(n)
    index = np.zeros((d, n), dtype=np.int8 if bins < 128 else np.int64)
    for start in range(0, d if n else 0, _BIN_BLOCK):
        block = slice(start, min(start + _BIN_BLOCK, d))
        index[block] = filter_bins(np.ascontiguousarray(features[:, block].T), bins)
    return Prepared(features, bins, index, seed)


def binned_mi(features: np.ndarray | Prepared, y: np.ndarray, num_classes: int, bins: int | None = None) -> np.ndarray:
    """(C, D) plug-in MI in bits between quantile-binned activations and each one-vs-rest label."""
    prepared = features if isinstance(features, Prepared) else prepare(features, bins=bins)
    bins = prepared.bins
    d, n = prepared.bin_index.shape
    # Counted filter by filter as (filter, class, bin): each filter's counts stay in a small, cached stretch.
    flat = np.add(prepared.bin_index, (np.asarray(y, dtype=np.int64) * bins)[None, :], dtype=np.int64)
    flat += (np.arange(d, dtype=np.int64) * (num_classes * bins))[:, None]
    joint = np.bincount(flat.ravel(), minlength=d * num_classes * bins).reshape(d, num_classes, bins).transpose(1, 0, 2).astype(np.float64)
    per_bin = joint.sum(axis=0)  # (D, B)
    p_class = (np.bincount(y, minlength=num_classes) / n)[:, None, None]
    p_bin = per_bin[None] / n
    mi = _plugin_term(joint / n, p_class * p_bin)
    np.subtract(per_bin[None], joint, out=joint)
    joint /= n
    mi += _plugin_term(joint, (1.0 - p_class) * p_bin)
    return np.maximum(mi.sum(axis=2), 0.0) / math.log(2.0)


def _plugin_term(p_joint: np.ndarray, p_product: np.ndarray) -> np.ndarray:
    """p log(p / q) with 0 log 0 = 0 (computed in place in q's buffer: these are the largest arrays here)."""
    present = p_joint > 0
    ratio = np.where(present, p_joint, 1.0)
    np.copyto(p_product, 1.0, where=~(p_product > 0))
    np.divide(ratio, p_product, out=ratio)
    np.log(ratio, out=ratio)
    np.multiply(p_joint, ratio, out=ratio)
    ratio[~present] = 0.0
    return ratio


def knn_mi(features: np.ndarray | Prepared, y: np.ndarray, num_classes: int, neighbors: int = KNN_NEIGHBORS, seed: int = 0) -> np.ndarray:
    """(C, D) Ross (2014) kNN MI in bits; 0 for a class with fewer than 2 samples on either side."""
    return knn_mi_nats(features, y, num_classes, neighbors, seed) / math.log(2.0)


def knn_mi_nats(features: np.ndarray | Prepared, y: np.ndarray, num_classes: int, neighbors: int = KNN_NEIGHBORS, seed: int = 0) -> np.ndarray:
    """(C, D) Ross (2014) kNN MI in nats (the unit of scikit-learn and of Liang et al.'s MIS)."""
    prepared = features if isinstance(features, Prepared) else Prepared(np.asarray(features, dtype=np.float64), 0, np.empty((0, 0), np.int64), seed)
    if prepared.seed != seed:
        prepared = Prepared(prepared.features, prepared.bins, prepared.bin_index, seed)
    return prepared.knn.mi(np.asarray(y, dtype=np.int64), num_classes, neighbors)


def mutual_information(features: np.ndarray | Prepared, y: np.ndarray, num_classes: int, estimator: str = BINNED, seed: int = 0) -> np.ndarray:
    """(C, D) MI in bits with the named estimator."""
    if estimator == BINNED:
        return binned_mi(features, y, num_classes)
    if estimator == KNN:
        return knn_mi(features, y, num_classes, seed=seed)
    raise ValueError(f"unknown MI estimator {estimator!r}; one of {ESTIMATORS}")


def mis(mi: np.ndarray) -> float:
    """Mean over filters of the best class's MI."""
    return float(mi.max(axis=0).mean()) if mi.size else 0.0


def shuffled_labels(y: np.ndarray, seed: int = 0) -> np.ndarray:
    """The labels permuted: what the estimators report when there is nothing to find."""
    return np.random.default_rng(seed).permutation(y)


def shuffled_mis(features: np.ndarray | Prepared, y: np.ndarray, num_classes: int, estimator: str = BINNED, seed: int = 0) -> float:
    """MIS with the labels permuted (bits)."""
    return mis(mutual_information(features, shuffled_labels(y, seed), num_classes, estimator, seed))


# ---------------------------------------------------------------------------------------------- kNN


@dataclass
class _Sorted:
    """Per filter (row): the standardised, jittered values as scikit-learn prepares them, sorted."""

    values: torch.Tensor  # (D, N) in sample order
    order: np.ndarray  # (D, N) sample index at each sorted position
    sorted: np.ndarray  # (D, N)

    @classmethod
    def of(cls, features: np.ndarray, seed: int) -> "_Sorted":
        x = torch.as_tensor(features, dtype=torch.float64).T.contiguous()  # (D, N)
        std = x.std(dim=1, keepdim=True)
        x = x / torch.where(std > 0, std, torch.ones_like(std))
        generator = torch.Generator().manual_seed(seed)
        jitter = 1e-10 * torch.clamp(x.abs().mean(dim=1, keepdim=True), min=1.0)
        x = x + jitter * torch.randn(x.shape, generator=generator, dtype=torch.float64)
        values = x.numpy()
        order = np.argsort(values, axis=1)
        return cls(x, order, np.take_along_axis(values, order, axis=1))

    def mi(self, y: np.ndarray, num_classes: int, neighbors: int) -> np.ndarray:
        d, n = self.sorted.shape
        counts = np.bincount(y, minlength=num_classes)
        out = np.zeros((num_classes, d))
        step = max(1, _KNN_CHUNK // max(n, 1))
        for start in range(0, d, step):
            rows = slice(start, min(start + step, d))
            out[:, rows] = _knn_fast(self.sorted[rows], self.order[rows], y, counts, neighbors, lambda r, c, rows=rows: _knn_class(self.values[rows][r], y, c, neighbors))
        return out


_DIGAMMA_CACHE: dict[int, np.ndarray] = {}


def _digamma_table(n: int) -> np.ndarray:
    """ψ(0..n) (ψ(0) unused), as torch computes it, so table lookups match the per-class path bit for bit."""
    table = _DIGAMMA_CACHE.get(n)
    if table is None:
        table = torch.special.digamma(torch.arange(n + 1, dtype=torch.float64)).numpy()
        _DIGAMMA_CACHE.clear()
        _DIGAMMA_CACHE[n] = table
    return table


def _digamma(v: float) -> float:
    return float(torch.special.digamma(torch.tensor(float(v), dtype=torch.float64)))


def _knn_class(x: torch.Tensor, y: np.ndarray, c: int, neighbors: int) -> np.ndarray:
    """(R,) nats for class c on the rows x (R, N): the estimator written per class, sorting each side's group
    and counting with binary searches. The reference the fast path is checked against, and its fallback."""
    n = x.shape[1]
    member = torch.as_tensor(y == c)
    groups = (x[:, member], x[:, ~member])
    if min(g.shape[1] for g in groups) < 2:
        return np.zeros(x.shape[0])
    everything = x.sort(dim=1).values
    k_terms = m_terms = label_terms = 0.0
    for group in groups:
        size = group.shape[1]
        k = min(neighbors, size - 1)
        ordered = group.sort(dim=1).values
        neighbor = _kth_neighbor(ordered, k)
        # Count samples strictly closer than the k-th neighbour (scikit-learn: dist <= nextafter(r, 0)),
        # using the neighbour's own value as the bound on its side so rounding cannot let it in.
        reach = (neighbor - ordered).abs()
        above = neighbor >= ordered
        hi = torch.where(above, neighbor, ordered + reach)
        lo = torch.where(above, ordered - reach, neighbor)
        within = torch.searchsorted(everything, hi) - torch.searchsorted(everything, lo, right=True)
        within = within.clamp(min=1)
        m_terms = m_terms + torch.special.digamma(within.double()).sum(dim=1)
        k_terms += size * _digamma(k)
        label_terms += size * _digamma(size)
    mi = _digamma(n) + (k_terms - label_terms) / n - m_terms / n
    return np.maximum(mi.numpy(), 0.0)


def _kth_neighbor(ordered: torch.Tensor, k: int) -> torch.Tensor:
    """(D, n): the value of each sorted value's k-th nearest other value (in 1-D it is within ±k places)."""
    inf = torch.full((ordered.shape[0], k), math.inf, dtype=ordered.dtype)
    padded = torch.cat([inf, ordered, inf], dim=1)
    n = ordered.shape[1]
    offsets = [t for t in range(-k, k + 1) if t != 0]
    values = torch.stack([padded[:, k + t : k + t + n] for t in offsets], dim=-1)
    nearest = (values - ordered[..., None]).abs().kthvalue(k, dim=-1).indices
    return values.gather(-1, nearest[..., None])[..., 0]


def _knn_fast(s: np.ndarray, order: np.ndarray, y: np.ndarray, counts: np.ndarray, neighbors: int, fallback) -> np.ndarray:
    """(C, R) nats for every class at once on R rows of sorted values s (R, N) with sort order `order`.

    Ross's estimate for class c is ψ(N) + ⟨ψ(k)⟩ − ⟨ψ(N_side)⟩ − ⟨ψ(m)⟩, m counting all samples strictly
    closer than a sample's k-th neighbour on its own side (class c, or the rest). In 1-D, with no tied
    values or distances, m is one plus the number of entries before that neighbour in the sample's
    nearest-first list of all samples. So:
    - class c's own side: each sample's k-th same-class neighbour, found among its class's samples in
      sorted order, and m from its position and one binary search for the other end of its interval;
    - the rest: the k-th nearest non-c sample is the k-th nearest of all (m = k) unless class c appears
      among the first k entries, then the entry where the k-th non-c one falls (m = that entry's rank).
    Rows with tied values, classes too small for the shared k, and positions whose first entries do not
    settle it go to `fallback(rows, c)` (the per-class computation).
    """
    r, n = s.shape
    num_classes = len(counts)
    k = neighbors
    psi = _digamma_table(n + 1)
    lab = y[order]  # (R, N) class at each sorted position
    rest_sizes = n - counts
    k_member = np.minimum(k, counts - 1)
    k_rest = np.minimum(k, rest_sizes - 1)
    usable = (counts >= 2) & (rest_sizes >= 2)
    tied_rows = (s[:, 1:] == s[:, :-1]).any(axis=1)

    if num_classes <= _FEW_CLASSES:
        # Few classes: each class against the rest is two groups, counted the same way as the classes.
        member = np.zeros((r, num_classes))
        rest = np.zeros((r, num_classes))
        unsettled = np.zeros((r, num_classes), dtype=bool)
        for c in range(num_classes):
            two = np.array([counts[c], rest_sizes[c]])
            sums, tied = _member_terms(s, (lab != c).astype(np.int64), two, np.minimum(k, two - 1), psi)
            member[:, c], rest[:, c] = sums[:, 0], sums[:, 1]
            unsettled[:, c] = tied.any(axis=1)
    else:
        member, member_tied = _member_terms(s, lab, counts, k_member, psi)  # (R, C): Σ over class-c samples of ψ(m)
        rest, unsettled = _rest_terms(s, lab, counts, k, psi)  # (R, C): Σ over the rest of ψ(m), if settled
        unsettled |= member_tied
        # The shared shortcut needs the rest side to use k neighbours (it has at least k + 1 samples).
        unsettled |= (k_rest != k)[None, :]
    unsettled[tied_rows] = True

    sizes_term = (counts * _psi_of(k_member) + rest_sizes * _psi_of(k_rest) - counts * _psi_of(counts) - rest_sizes * _psi_of(rest_sizes)) / n
    mi = _digamma(n) + sizes_term[None, :] - (member + rest) / n
    mi = np.maximum(mi, 0.0)
    mi[:, ~usable] = 0.0
    for c in np.flatnonzero(usable & unsettled.any(axis=0)):
        rows = np.flatnonzero(unsettled[:, c])
        mi[rows, c] = fallback(torch.as_tensor(rows), int(c))
    return mi.T


def _psi_of(values: np.ndarray) -> np.ndarray:
    return torch.special.digamma(torch.as_tensor(np.maximum(values, 1), dtype=torch.float64)).numpy()


def _member_terms(s: np.ndarray, lab: np.ndarray, counts: np.ndarray, k_member: np.ndarray, psi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(R, C): Σ over each class's samples of ψ(m), m = 1 + samples strictly closer than its k-th same-class
    neighbour; and (R, C) bool where two of a sample's candidate neighbours tie (for the fallback)."""
    r, n = s.shape
    num_classes = len(counts)
    grouped = np.argsort(lab.astype(np.int16 if num_classes < 2**15 else np.int64), axis=1, kind="stable")  # sorted positions by class
    values = np.take_along_axis(s, grouped, axis=1)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    column_class = np.repeat(np.arange(num_classes), counts)
    first, last = starts[column_class], starts[column_class] + counts[column_class] - 1
    column = np.arange(n)
    k = np.maximum(k_member[column_class], 1)  # (N,); classes of one sample are not used
    kmax = int(k.max()) if n else 1
    left, right = [], []
    for a in range(1, kmax + 1):
        gap = np.full((r, n), np.inf)
        gap[:, a:] = values[:, a:] - values[:, :-a]
        gap[:, column - a < first] = np.inf
        left.append(gap)
        gap = np.full((r, n), np.inf)
        gap[:, :-a] = values[:, a:] - values[:, :-a]
        gap[:, column + a > last] = np.inf
        right.append(gap)
    kth = _kth_of_two_sorted(left, right, k)
    n_left = np.zeros((r, n), np.int64)
    n_right = np.zeros((r, n), np.int64)
    for a in range(kmax):
        n_left += left[a] <= kth
        n_right += right[a] <= kth
    tied = (n_left + n_right > k[None, :]) & np.isfinite(kth)
    n_left = np.minimum(n_left, k[None, :])
    left_kth = np.zeros((r, n), dtype=bool)
    for a, gap in enumerate(left, start=1):
        left_kth |= (n_left == a) & (gap == kth)
    offset = np.where(left_kth, -n_left, k[None, :] - n_left)
    offset[:, counts[column_class] < 2] = 0
    at = np.clip(column[None, :] + offset, 0, n - 1)
    neighbour = np.take_along_axis(grouped, at, axis=1)  # its sorted position
    reach = np.abs(np.take_along_axis(values, at, axis=1) - values)
    # Neighbour on the right: hi is its value (below it: its position), lo = value - reach (a search).
    # Neighbour on the left: lo is its value (up to it: its position + 1), hi = value + reach (a search).
    query = np.where(left_kth, values + reach, values - reach)
    counted = np.empty((r, n), dtype=np.int64)
    for i in range(r):
        row = s[i]
        found = np.searchsorted(row, query[i], side="left")
        equal = row[np.minimum(found, n - 1)] == query[i]
        upto_lo = np.where(left_kth[i], neighbour[i] + 1, found + equal)
        below_hi = np.where(left_kth[i], found, neighbour[i])
        counted[i] = below_hi - upto_lo
    terms = psi[np.maximum(counted, 1)]
    flat = np.arange(r)[:, None] * num_classes + column_class[None, :]
    sums = np.bincount(flat.ravel(), weights=terms.ravel(), minlength=r * num_classes).reshape(r, num_classes)
    unsettled = np.bincount(flat[tied], minlength=r * num_classes).reshape(r, num_classes) > 0
    return sums, unsettled


def _kth_of_two_sorted(left: list[np.ndarray], right: list[np.ndarray], k: np.ndarray) -> np.ndarray:
    """The k-th smallest of the union of two ascending sequences (left[0] ≤ left[1] ≤ ..., same for right),
    with k per column in 1..len(left): min over a + b = k of max(left[a], right[b])."""
    out = np.full(left[0].shape, np.inf)
    for kk in np.unique(k):
        kk = int(kk)
        cols = k == kk
        best = np.minimum(left[kk - 1][:, cols], right[kk - 1][:, cols])
        for a in range(1, kk):
            best = np.minimum(best, np.maximum(left[a - 1][:, cols], right[kk - a - 1][:, cols]))
        out[:, cols] = best
    return out


def _rest_terms(s: np.ndarray, lab: np.ndarray, counts: np.ndarray, k: int, psi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(R, C) Σ over the samples not of class c of ψ(m) for their k-th nearest non-c neighbour, and (R, C) bool:
    where a position's first entries did not settle it (or two entries tie), for the per-class fallback."""
    r, n = s.shape
    num_classes = len(counts)
    entries = min(_ENTRIES, n - 1)
    offsets, tied = _nearest_entries(s, entries)  # (E, R, N) offsets nearest first; (R, N) distance ties
    flat_lab = lab.ravel()
    at = (np.arange(r)[:, None] * n + np.arange(n)[None, :])[None]  # (1, R, N) flat positions
    labels = flat_lab[at + offsets]  # (E, R, N) class of each entry
    own = lab
    # Base: every sample counts ψ(k) towards every class it is not in.
    total = np.broadcast_to((n - counts) * psi[k], (r, num_classes)).copy()
    unsettled = np.zeros((r, num_classes), dtype=bool)
    rows = np.broadcast_to(np.arange(r)[:, None], (r, n))
    for t in range(min(k, entries)):
        c_t = labels[t]
        fresh = c_t != own
        for earlier in range(t):
            fresh &= labels[earlier] != c_t
        # j*: the first rank at which k entries are not of class c_t (0 if the entries looked at do not reach it).
        reached = np.cumsum(labels != c_t[None], axis=0, dtype=np.int16) == k  # (E, R, N)
        rank = np.where(reached.any(axis=0), reached.argmax(axis=0) + 1, 0)
        far = fresh & (rank == 0) & ~tied
        if far.any():  # class c_t crowds the first entries: look further out around those samples only
            i, p = np.nonzero(far)
            m, ok = _rest_count_near(s, lab, i, p, c_t[far], k)
            unsettled[i[~ok], c_t[far][~ok]] = True
            delta = psi[m[ok]] - psi[k]
            total += np.bincount(i[ok] * num_classes + c_t[far][ok], weights=delta, minlength=r * num_classes).reshape(r, num_classes)
        bad = fresh & tied
        if bad.any():
            unsettled[rows[bad], c_t[bad]] = True
        good = fresh & (rank > 0) & ~tied
        delta = psi[rank[good]] - psi[k]
        total += np.bincount(rows[good] * num_classes + c_t[good], weights=delta, minlength=r * num_classes).reshape(r, num_classes)
    # A tie among a sample's first entries changes its base count too: such rows go to the fallback whole.
    unsettled[tied.any(axis=1)] = True
    return total, unsettled


# Positions either side a crowded sample's count looks at before the per-class fallback.
_NEAR = 32


def _rest_count_near(s: np.ndarray, lab: np.ndarray, i: np.ndarray, p: np.ndarray, c: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """For sorted position p of row i (not of class c): m, one plus the samples strictly closer than its k-th
    nearest sample not of class c, counted the per-class way (below the neighbour's own value on its side,
    beyond value ± reach on the other), within _NEAR positions either side; ok False where that window
    does not hold the whole interval (left to the fallback)."""
    n = s.shape[1]
    offsets = np.arange(-_NEAR, _NEAR + 1)
    at = p[:, None] + offsets[None, :]
    inside = (at >= 0) & (at < n)
    at = np.clip(at, 0, n - 1)
    values = s[i[:, None], at]
    own = s[i, p][:, None]
    eligible = inside & (lab[i[:, None], at] != c[:, None]) & (offsets[None, :] != 0)
    distance = np.where(eligible, np.abs(values - own), np.inf)
    kth = np.argsort(distance, axis=1, kind="stable")[:, k - 1]
    row = np.arange(len(p))
    neighbour = values[row, kth]
    found = np.isfinite(distance[row, kth])
    reach = np.abs(neighbour - own[:, 0])
    above = neighbour >= own[:, 0]
    hi = np.where(above, neighbour, own[:, 0] + reach)
    lo = np.where(above, own[:, 0] - reach, neighbour)
    within = inside & (values > lo[:, None]) & (values < hi[:, None])
    # The window must reach past both ends of the interval (or the row's ends).
    left_out = ~inside[:, 0] | (values[:, 0] <= lo)
    right_out = ~inside[:, -1] | (values[:, -1] >= hi)
    return np.maximum(within.sum(axis=1), 1), found & left_out & right_out


def _nearest_entries(s: np.ndarray, entries: int) -> tuple[np.ndarray, np.ndarray]:
    """Per sorted position, the offsets (negative: left) of its `entries` nearest other positions, nearest
    first (E, R, N), and where two of those distances tie (R, N), making the order ambiguous.

    Merging the left and right distance sequences: the first t entries hold A_t = #{a ≤ t : left_a ≤
    right_(t+1-a)} left ones (ties go left), so entry t is left iff A_t > A_(t-1); only comparisons needed."""
    r, n = s.shape
    left = np.full((entries, r, n), np.inf)
    right = np.full((entries, r, n), np.inf)
    for a in range(1, entries + 1):
        left[a - 1][:, a:] = s[:, a:] - s[:, :-a]
        right[a - 1][:, :-a] = s[:, a:] - s[:, :-a]
    offsets = np.empty((entries, r, n), dtype=np.int64)
    tied = np.zeros((r, n), dtype=bool)
    previous = np.zeros((r, n), dtype=np.int64)
    for t in range(1, entries + 1):
        taken = np.zeros((r, n), dtype=np.int64)
        for a in range(1, t + 1):
            taken += left[a - 1] <= right[t - a]
            tied |= (left[a - 1] == right[t - a]) & np.isfinite(right[t - a])
        is_left = taken > previous
        offsets[t - 1] = np.where(is_left, -taken, t - taken)
        previous = taken
    for a in range(1, entries):
        tied |= ((left[a - 1] == left[a]) & np.isfinite(left[a])) | ((right[a - 1] == right[a]) & np.isfinite(right[a]))
    return offsets, tied
