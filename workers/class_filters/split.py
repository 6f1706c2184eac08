"""The stratified fit/eval split: rankings are fitted on one part and judged on the other."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workers.errors import DatasetUnusable


@dataclass(frozen=True)
class Split:
    """Row indices into the dataset, each sorted."""

    fit: np.ndarray
    eval: np.ndarray


def stratified_split(y: np.ndarray, fit_fraction: float, num_classes: int, seed: int) -> Split:
    """Each class puts round(n_c · fit_fraction) samples in fit, at least one on each side.

    Every class 0..num_classes-1 must have two samples: a class nobody can fit or evaluate would
    leave holes in every per-class figure.
    """
    counts = np.bincount(y, minlength=num_classes)
    thin = [c for c in range(num_classes) if counts[c] < 2]
    if thin:
        listed = ", ".join(f"{c} ({counts[c]})" for c in thin[:20])
        raise DatasetUnusable(
            f"every class needs at least 2 samples (one to fit, one to evaluate); too few for class: {listed}",
            reason="CLASS_TOO_SMALL",
        )
    rng = np.random.default_rng(seed)
    fit: list[np.ndarray] = []
    held: list[np.ndarray] = []
    for c in range(num_classes):
        rows = rng.permutation(np.flatnonzero(y == c))
        n_fit = int(np.clip(round(len(rows) * fit_fraction), 1, len(rows) - 1))
        fit.append(rows[:n_fit])
        held.append(rows[n_fit:])
    return Split(fit=np.sort(np.concatenate(fit)), eval=np.sort(np.concatenate(held)))
