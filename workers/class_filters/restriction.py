"""The restricted model (each class's logit computed from its own filter subset) and ablation studies.

"Removing" a filter means different things where the layer sits:
- at the last Linear's input (exact split): its term leaves the logit sum. The decomposed head
  z_c = Σ_{i∈S_c} w[c,i]·a_i + b_c costs C·k multiply-adds instead of C·D; one matrix product
  scores every subset at once and a cumulative sum scores every prefix of a ranking at once.
- deeper in the network: its output map is replaced by its mean over the fit samples (mean
  ablation), and the rest of the network runs; one forward pass per mask.
Both implement the same three questions, so subsets.py and the ablation study need not care.

The dataset may hold a few of the head's classes (`classes`, output indices). Only their logits are
restricted; every other output keeps its full logit and still competes in the argmax, exactly as in the
full model, so a restricted model is never credited for rivals it silently dropped.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from workers.class_filters.activations import BATCH_SIZE, LayerActivations, LogitReader, model_batches
from workers.class_filters.head import MODEL_OUTPUT, Logits
from workers.model import LoadedModel, frozen

# Random subsets averaged for the "random subset of the same size" control.
RANDOM_DRAWS = 5


class Restriction(Protocol):
    """Scores the eval samples with filters removed. Masks are bool, True = keep / remove as named.
    Classes are output indices of the head; `classes` lists the ones the dataset holds."""

    exhaustive: bool  # True when every prefix size is cheap to score at once
    classes: np.ndarray

    def restricted_logits(self, keep: np.ndarray) -> np.ndarray:
        """keep (P, D), one row per class in `classes`: (N, C) logits where class classes[p]'s logit sees only
        the filters keep[p] and every other output keeps its full logit."""

    def prefix_logits(self, c: int, order: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        """(len(sizes), N): output c's logit from the first `size` filters of `order` alone."""

    def logits_without(self, remove: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """(len(rows), C): all logits of the eval rows `rows` with the filters `remove` removed from the layer."""

    def logits_without_each(self, removes: list[np.ndarray], rows: np.ndarray) -> list[np.ndarray]:
        """logits_without for each mask in `removes`."""


class HeadRestriction:
    """The decomposed head at its input: exact, closed form, no network pass."""

    exhaustive = True

    def __init__(self, features: np.ndarray, weight: np.ndarray, bias: np.ndarray, classes: np.ndarray | None = None) -> None:
        self.features = features
        self.weight = weight
        self.bias = bias
        self.classes = np.arange(weight.shape[0]) if classes is None else np.asarray(classes)
        self._by_filter = np.ascontiguousarray(features.T)  # (D, N): prefix sums gather whole rows
        self._full = features @ weight.T + bias

    def restricted_logits(self, keep: np.ndarray) -> np.ndarray:
        out = self._full.copy()
        out[:, self.classes] = self.features @ (self.weight[self.classes] * keep).T + self.bias[self.classes]
        return out

    def prefix_logits(self, c: int, order: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        sizes = np.asarray(sizes)
        used = order[: int(sizes.max())]
        running = np.cumsum(self._by_filter[used] * self.weight[c, used][:, None], axis=0)
        return running[sizes - 1] + self.bias[c]

    def logits_without(self, remove: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Subtract the few removed terms from the full logits, or add up the few kept ones."""
        return self.logits_without_each([remove], rows)[0]

    def logits_without_each(self, removes: list[np.ndarray], rows: np.ndarray) -> list[np.ndarray]:
        """logits_without for several masks on the same rows (the rows are gathered once)."""
        features, full = self.features[rows], self._full[rows]
        out = []
        for remove in removes:
            removed = np.flatnonzero(remove)
            if 2 * len(removed) <= len(remove):
                out.append(full - features[:, removed] @ self.weight[:, removed].T)
            else:
                kept = np.flatnonzero(~remove)
                out.append(features[:, kept] @ self.weight[:, kept].T + self.bias)
        return out


class AblationRestriction:
    """Mean ablation at an inner layer: the removed filters' maps become their fit-set mean map."""

    exhaustive = False

    def __init__(
        self,
        model: LoadedModel,
        layer: str,
        mean_map: torch.Tensor,
        x_eval: np.ndarray,
        full_logits: np.ndarray,
        classes: np.ndarray,
        reader: LogitReader | None = None,
        device: torch.device | str = "cpu",
        batch_size: int = BATCH_SIZE,
    ) -> None:
        self.model = model
        self.module = model.require_module("class_filters")
        self.target = model.submodule(layer)
        self.mean_map = mean_map.to(device)
        self.x_eval = x_eval
        self.full_logits = full_logits
        self.classes = np.asarray(classes)
        self.reader = reader or LogitReader(None, Logits(MODEL_OUTPUT))
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.passes = 0  # forward passes over eval samples, for cost reporting

    def restricted_logits(self, keep: np.ndarray) -> np.ndarray:
        rows = np.arange(len(self.x_eval))
        out = self.full_logits.copy()
        for p, c in enumerate(self.classes):
            out[:, c] = self._logits(rows, keep[p])[:, c]
        return out

    def prefix_logits(self, c: int, order: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        rows = np.arange(len(self.x_eval))
        out = []
        for size in np.asarray(sizes):
            keep = np.zeros(len(order), dtype=bool)
            keep[order[:size]] = True
            out.append(self._logits(rows, keep)[:, c])
        return np.stack(out)

    def logits_without(self, remove: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return self._logits(rows, ~remove)

    def logits_without_each(self, removes: list[np.ndarray], rows: np.ndarray) -> list[np.ndarray]:
        return [self._logits(rows, ~remove) for remove in removes]

    def _logits(self, rows: np.ndarray, keep: np.ndarray) -> np.ndarray:
        keep_t = torch.as_tensor(keep, device=self.device)
        shape = (1, -1) + (1,) * (self.mean_map.dim() - 1)
        keep_view = keep_t.view(shape).to(self.mean_map.dtype)
        fill = (self.mean_map.unsqueeze(0) * (1 - keep_view)).to(self.mean_map.dtype)

        def hook(_m: nn.Module, _inputs: Any, output: Any) -> Any:
            out = output[0] if isinstance(output, (tuple, list)) else output
            replaced = out * keep_view.to(out.dtype) + fill.to(out.dtype)
            if isinstance(output, tuple):
                return (replaced, *output[1:])
            if isinstance(output, list):
                return [replaced, *output[1:]]
            return replaced

        handle = self.target.register_forward_hook(hook)
        chunks: list[np.ndarray] = []
        try:
            with torch.no_grad(), frozen(self.module):
                for _, xb in model_batches(self.model, self.x_eval, rows, self.device, self.batch_size):
                    with self.reader.hooked(len(xb), self.model.shapes.batch) as logits_of:
                        out = self.module(xb)
                        out = logits_of(out[0] if isinstance(out, (tuple, list)) else out)
                    chunks.append(out.double().cpu().numpy())
        finally:
            handle.remove()
        self.passes += 1
        return np.concatenate(chunks) if chunks else np.zeros((0, 0))


def restriction_for(
    acts: LayerActivations, eval_rows: np.ndarray, model: LoadedModel, x: np.ndarray, device: torch.device | str = "cpu", classes: np.ndarray | None = None
) -> Restriction:
    """The decomposed head when the split is exact, else mean ablation at the layer. classes: the output
    indices the dataset holds (default: every output)."""
    classes = np.arange(acts.num_classes) if classes is None else np.asarray(classes)
    if acts.exact:
        return HeadRestriction(acts.features[eval_rows], acts.head_weight, acts.head_bias, classes)
    return AblationRestriction(model, acts.layer, acts.mean_map, x[eval_rows], acts.logits[eval_rows], classes, acts.reader, device)


def recall(logits: np.ndarray, y: np.ndarray, c: int) -> float:
    """Share of class-c rows predicted as c (argmax)."""
    rows = y == c
    return float((logits[rows].argmax(axis=1) == c).mean()) if rows.any() else 0.0


def ablation_drops(
    restriction: Restriction,
    subsets: np.ndarray,
    full_logits: np.ndarray,
    y: np.ndarray,
    num_filters: int,
    seed: int = 0,
    draws: int = RANDOM_DRAWS,
) -> list[dict[str, float | None]]:
    """Per class in restriction.classes: class-c recall lost when S_c, a random same-size subset of the other
    filters (mean over `draws`), or everything but S_c is removed from the layer. subsets (P, k) pads with -1;
    an empty S_c has nothing to ablate (None) but its complement (every filter) still is."""
    rng = np.random.default_rng(seed)
    out = []
    for c, subset in zip(restriction.classes, subsets):
        subset = subset[subset >= 0]
        rows = np.flatnonzero(y == c)
        base = _recall_of(full_logits[rows], c)
        remove = np.zeros(num_filters, dtype=bool)
        remove[subset] = True
        others = np.flatnonzero(~remove)
        masks = []
        for _ in range(draws if len(subset) and len(others) >= len(subset) else 0):
            drawn = np.zeros(num_filters, dtype=bool)
            drawn[rng.choice(others, size=len(subset), replace=False)] = True
            masks.append(drawn)
        scored = restriction.logits_without_each(masks + ([remove] if len(subset) else []) + [~remove], rows)
        random_recalls = [_recall_of(logits, c) for logits in scored[: len(masks)]]
        out.append(
            {
                "subset_drop": base - _recall_of(scored[len(masks)], c) if len(subset) else None,
                "random_drop": base - float(np.mean(random_recalls)) if random_recalls else None,
                "complement_drop": base - _recall_of(scored[-1], c),
            }
        )
    return out


def _recall_of(logits: np.ndarray, c: int) -> float:
    """Share of rows (all of class c) predicted as c."""
    return float((logits.argmax(axis=1) == c).mean()) if len(logits) else 0.0
