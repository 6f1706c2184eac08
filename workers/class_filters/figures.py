"""The two pictures: a class × filter heat map whose column order makes the subsets show as blocks,
and a bar chart of the three subset sizes per class."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def block_order(matrix: np.ndarray, subsets: np.ndarray) -> np.ndarray:
    """Columns: class 0's subset, then class 1's (filters not shown yet), ...; then the rest by their
    strongest class and strength. Disjoint subsets then form a staircase of blocks on the diagonal."""
    seen: set[int] = set()
    columns: list[int] = []
    for subset in subsets:
        for i in subset[subset >= 0]:
            if int(i) not in seen:
                seen.add(int(i))
                columns.append(int(i))
    rest = [i for i in range(matrix.shape[1]) if i not in seen]
    strongest = matrix[:, rest].argmax(axis=0) if rest else np.array([], dtype=int)
    peak = matrix[:, rest].max(axis=0) if rest else np.array([])
    rest_sorted = [rest[j] for j in np.lexsort((-peak, strongest))]
    return np.array(columns + rest_sorted, dtype=np.int64)


def heatmap(path: Path, matrix: np.ndarray, subsets: np.ndarray, class_names: list[str], title: str) -> None:
    """Each row scaled by its largest |value|; dots mark each class's subset."""
    order = block_order(matrix, subsets)
    scale = np.abs(matrix).max(axis=1, keepdims=True)
    shown = (matrix / np.where(scale > 0, scale, 1.0))[:, order]
    classes, width = shown.shape
    fig, ax = plt.subplots(figsize=(min(18.0, 3.0 + 0.12 * width), min(14.0, 1.5 + 0.35 * classes)))
    image = ax.imshow(shown, aspect="auto", cmap="RdBu_r", vmin=-1.0, vmax=1.0, interpolation="nearest")
    position = {int(f): j for j, f in enumerate(order)}
    rows = [c for c, subset in enumerate(subsets) for _ in subset[subset >= 0]]
    cols = [position[int(i)] for subset in subsets for i in subset[subset >= 0]]
    ax.scatter(cols, rows, s=6 if width > 64 else 14, c="black", marker="o", linewidths=0)
    if classes <= 40:
        ax.set_yticks(range(classes), class_names)
    if width <= 64:
        ax.set_xticks(range(width), [str(i) for i in order], fontsize=6, rotation=90)
    ax.set_xlabel("filter (ordered by the classes' subsets)")
    ax.set_ylabel("class")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.03, label="contribution / row max")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def subset_sizes(path: Path, sizes: dict[str, np.ndarray], class_names: list[str], width: int) -> None:
    """Grouped bars per class: fixed k, mass coverage, accuracy retention."""
    labels = {"k": "fixed k", "coverage": "mass coverage", "retention": "accuracy retention"}
    classes = len(class_names)
    fig, ax = plt.subplots(figsize=(min(18.0, 3.0 + 0.45 * classes), 3.5))
    positions = np.arange(classes)
    bar = 0.8 / len(labels)
    for j, (key, label) in enumerate(labels.items()):
        ax.bar(positions + (j - 1) * bar, np.maximum(sizes[key], 0), width=bar, label=label)
    if classes <= 40:
        ax.set_xticks(positions, class_names, rotation=45 if classes > 8 else 0, ha="right" if classes > 8 else "center")
    ax.set_ylabel(f"filters (of {width})")
    ax.set_title("filters each class needs")
    tallest = max(int(np.max(sizes[key])) if len(sizes[key]) else 0 for key in labels)
    ax.set_ylim(0, max(tallest, 1) * 1.3)
    ax.legend(fontsize=8, ncol=len(labels), loc="upper center")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
