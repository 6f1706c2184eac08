"""The classes a labelled set holds and its stratified fit/eval split: rankings are fitted on one part and
judged on the other.

A dataset may hold any subset of the head's classes (3 of Kinetics' 400): the classes analysed are the
labels present, each of which needs two samples (one to fit, one to evaluate). The head's other outputs
still compete in every prediction (see restriction.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workers.errors import DatasetUnusable


@dataclass(frozen=True)
class Split:
    """Row indices into the dataset, each sorted."""

    fit: np.ndarray
    eval: np.ndarray


def present_classes(y: np.ndarray) -> np.ndarray:
    """The labels the dataset holds, sorted (output indices of the head)."""
    return np.unique(np.asarray(y))


def stratified_split(y: np.ndarray, fit_fraction: float, seed: int) -> Split:
    """Each present class puts round(n_c · fit_fraction) samples in fit, at least one on each side.

    Every present class must have two samples: a class nobody can fit or evaluate would leave holes in
    every per-class figure. Classes without samples are not analysed (they still compete as outputs).
    """
    y = np.asarray(y)
    classes, counts = np.unique(y, return_counts=True)
    thin = [(int(c), int(n)) for c, n in zip(classes, counts) if n < 2]
    if thin:
        listed = ", ".join(f"{c} ({n})" for c, n in thin[:20])
        raise DatasetUnusable(
            f"every class in the dataset needs at least 2 samples (one to fit, one to evaluate); too few for class: {listed}",
            reason="CLASS_TOO_SMALL",
        )
    rng = np.random.default_rng(seed)
    fit: list[np.ndarray] = []
    held: list[np.ndarray] = []
    for c in classes:
        rows = rng.permutation(np.flatnonzero(y == c))
        n_fit = int(np.clip(round(len(rows) * fit_fraction), 1, len(rows) - 1))
        fit.append(rows[:n_fit])
        held.append(rows[n_fit:])
    return Split(fit=np.sort(np.concatenate(fit)), eval=np.sort(np.concatenate(held)))
