"""Mutual information between each filter's activation and 1[y = c], in bits, and CSG's MIS.

Two estimators:
- binned (default): per-filter quantile bins, a plug-in estimate from joint counts. Fast and
  vectorised over classes × filters; it is biased upward by about (bins − 1) / (2 N ln 2) bits,
  which is what the shuffled-label baseline shows.
- knn: Ross (2014)'s nearest-neighbour estimator for a continuous variable and a discrete one,
  the estimator behind scikit-learn's `mutual_info_classif` that CSG (Liang et al. 2020) used;
  an option for parity with their numbers. Computed in 1-D by sorting, batched over filters.

MIS = mean over filters of max over classes of MI: high when filters specialise in classes.
"""

from __future__ import annotations

import math

import numpy as np
import torch

BINNED = "binned"
KNN = "knn"
ESTIMATORS = (BINNED, KNN)

# Neighbours for the kNN estimator (scikit-learn's default).
KNN_NEIGHBORS = 3
# Filters per chunk of the kNN estimator: bounds memory to chunk × samples × 2·neighbours floats.
_KNN_CHUNK = 64


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


def binned_mi(features: np.ndarray, y: np.ndarray, num_classes: int, bins: int | None = None) -> np.ndarray:
    """(C, D) plug-in MI in bits between quantile-binned activations and each one-vs-rest label."""
    n, d = features.shape
    bins = bins or default_bins(n)
    index = quantile_bins(features, bins)
    flat = (y[:, None] * d + np.arange(d)[None, :]) * bins + index
    joint = np.bincount(flat.ravel(), minlength=num_classes * d * bins).reshape(num_classes, d, bins).astype(np.float64)
    per_bin = joint.sum(axis=0)  # (D, B)
    p_class = (np.bincount(y, minlength=num_classes) / n)[:, None, None]
    p_bin = per_bin[None] / n
    mi = _plugin_term(joint / n, p_class * p_bin) + _plugin_term((per_bin[None] - joint) / n, (1.0 - p_class) * p_bin)
    return np.maximum(mi.sum(axis=2), 0.0) / math.log(2.0)


def _plugin_term(p_joint: np.ndarray, p_product: np.ndarray) -> np.ndarray:
    """p log(p / q) with 0 log 0 = 0."""
    safe = np.where(p_joint > 0, p_joint, 1.0)
    return np.where(p_joint > 0, p_joint * np.log(safe / np.where(p_product > 0, p_product, 1.0)), 0.0)


def knn_mi(features: np.ndarray, y: np.ndarray, num_classes: int, neighbors: int = KNN_NEIGHBORS, seed: int = 0) -> np.ndarray:
    """(C, D) Ross (2014) kNN MI in bits; 0 for a class with fewer than 2 samples on either side."""
    n, d = features.shape
    x = torch.as_tensor(features, dtype=torch.float64).T.contiguous()  # (D, N)
    std = x.std(dim=1, keepdim=True)
    x = x / torch.where(std > 0, std, torch.ones_like(std))
    generator = torch.Generator().manual_seed(seed)
    jitter = 1e-10 * torch.clamp(x.abs().mean(dim=1, keepdim=True), min=1.0)
    x = x + jitter * torch.randn(x.shape, generator=generator, dtype=torch.float64)
    y_t = torch.as_tensor(y)
    out = np.zeros((num_classes, d))
    for start in range(0, d, _KNN_CHUNK):
        chunk = x[start : start + _KNN_CHUNK]
        everything = chunk.sort(dim=1).values
        for c in range(num_classes):
            member = y_t == c
            groups = (chunk[:, member], chunk[:, ~member])
            if min(g.shape[1] for g in groups) < 2:
                continue
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
            out[c, start : start + chunk.shape[0]] = np.maximum(mi.numpy(), 0.0)
    return out / math.log(2.0)


def _kth_neighbor(ordered: torch.Tensor, k: int) -> torch.Tensor:
    """(D, n): the value of each sorted value's k-th nearest other value (in 1-D it is within ±k places)."""
    inf = torch.full((ordered.shape[0], k), math.inf, dtype=ordered.dtype)
    padded = torch.cat([inf, ordered, inf], dim=1)
    n = ordered.shape[1]
    offsets = [t for t in range(-k, k + 1) if t != 0]
    values = torch.stack([padded[:, k + t : k + t + n] for t in offsets], dim=-1)
    nearest = (values - ordered[..., None]).abs().kthvalue(k, dim=-1).indices
    return values.gather(-1, nearest[..., None])[..., 0]


def _digamma(v: float) -> float:
    return float(torch.special.digamma(torch.tensor(float(v), dtype=torch.float64)))


def mutual_information(features: np.ndarray, y: np.ndarray, num_classes: int, estimator: str = BINNED, seed: int = 0) -> np.ndarray:
    """(C, D) MI in bits with the named estimator."""
    if estimator == BINNED:
        return binned_mi(features, y, num_classes)
    if estimator == KNN:
        return knn_mi(features, y, num_classes, seed=seed)
    raise ValueError(f"unknown MI estimator {estimator!r}; one of {ESTIMATORS}")


def mis(mi: np.ndarray) -> float:
    """Mean over filters of the best class's MI."""
    return float(mi.max(axis=0).mean()) if mi.size else 0.0


def shuffled_mis(features: np.ndarray, y: np.ndarray, num_classes: int, estimator: str = BINNED, seed: int = 0) -> float:
    """MIS with the labels permuted: what the estimator reports when there is nothing to find."""
    permuted = np.random.default_rng(seed).permutation(y)
    return mis(mutual_information(features, permuted, num_classes, estimator, seed))
