"""The `class_filters` task: which few filters of a layer carry each class's decision.

Options: ClassFiltersOptions (see options.Options). Needs a labelled dataset covering every output
class with at least 2 samples; x is raw input (N, *input shape), normalised here.

Summary JSON (also written as class_filters/class_filters.json):
    layer               hooked module ("<last Linear>:input" by default)
    num_filters, num_classes, class_names
    ranking             "contribution" | "frequency"
    attribution         "exact_logit_split" (the layer feeds the last Linear) | "gradient_x_activation"
    restriction         "decomposed_head" | "mean_ablation" (what removing a filter means)
    mi_estimator, k, fit_samples, eval_samples
    classes[]           per class:
        class, name
        subset_k            S_c: the k best filters, best first
        coverage_size       shortest ranking prefix with mass_coverage of the positive contribution
        retention_size      shortest ranking prefix whose restricted logit keeps accuracy_retention of the class's F1
        recall_full         class recall of the full model on eval
        recall_restricted   class recall when every class's logit uses only its S_c
        ablation            {subset_drop, random_drop, complement_drop}: recall lost removing S_c,
                            a random same-size subset (mean of 5 draws), everything but S_c
        stability_jaccard   mean Jaccard of S_c with bootstrap rankings (None if bootstrap = 0)
        mi_top_k_jaccard    Jaccard of S_c with the k filters of highest MI for the class
    global              mis, mis_shuffled (bits; label-shuffled baseline), psi_0_5 (Badola's Ψ(0.5)),
                        density (share of filters in some S_c), mean_overlap (mean pairwise Jaccard of S_c),
                        accuracy_full, accuracy_restricted (eval), compute_saving (1 − Σ|S_c| / (C·D)),
                        selectivity {mean, median} of Leavitt's class selectivity index

Artifacts under class_filters/: class_filters.json, matrices.npz (contribution, mutual_information,
selectivity, frequency: C × D; subsets, coverage_sizes, retention_sizes, class_names),
heatmap.png (contribution, columns ordered so the subsets show as blocks), subset_sizes.png.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from workers.class_filters.activations import collect, output_width
from workers.class_filters.analysis import analyse
from workers.class_filters.figures import heatmap, subset_sizes
from workers.class_filters.options import Options
from workers.class_filters.restriction import restriction_for
from workers.class_filters.split import stratified_split
from workers.context import TaskContext
from workers.dataset import Dataset
from workers.errors import DatasetUnusable
from workers.input_spec import InputSpec
from workers.tasks import register

NAME = "class_filters"


@register(NAME)
def run(ctx: TaskContext) -> dict[str, Any]:
    """Rank, size, restrict and ablate each class's filter subset (see the module doc for the summary)."""
    options = Options.from_dict(ctx.options)
    ctx.model.require_module(NAME)
    dataset = checked_dataset(ctx.dataset, ctx.model.input_spec)
    x, y = dataset.x, dataset.y
    num_classes = checked_classes(y, output_width(ctx.model, x, ctx.device))
    split = stratified_split(y, options.fit_fraction, num_classes, options.seed)

    ctx.progress("forward pass", 0.0)
    acts = collect(
        ctx.model,
        x,
        y,
        split.fit,
        layer=options.layer,
        device=ctx.device,
        on_fraction=lambda f: ctx.progress("forward pass", 0.5 * f),
        num_classes=num_classes,
    )
    restriction = restriction_for(acts, split.eval, ctx.model, x, ctx.device)
    result = analyse(
        acts,
        y,
        split,
        options,
        restriction,
        dataset.class_names,
        on_stage=lambda stage, f: ctx.progress(stage, 0.5 + 0.45 * f),
    )

    ctx.progress("figures", 0.95)
    out = ctx.out_dir / NAME
    out.mkdir(parents=True, exist_ok=True)
    summary = result.summary
    (out / "class_filters.json").write_text(json.dumps(summary, indent=2, allow_nan=False))
    np.savez_compressed(
        out / "matrices.npz",
        **{name: matrix.astype(np.float32) for name, matrix in result.matrices.items()},
        subsets=result.subsets.astype(np.int64),
        coverage_sizes=result.sizes["coverage"].astype(np.int64),
        retention_sizes=result.sizes["retention"].astype(np.int64),
        class_names=np.array(summary["class_names"], dtype=str),
    )
    heatmap(
        out / "heatmap.png",
        result.matrices["contribution"],
        result.subsets,
        summary["class_names"],
        f"class × filter contribution at {acts.layer} ({acts.attribution.replace('_', ' ')})",
    )
    subset_sizes(out / "subset_sizes.png", result.sizes, summary["class_names"], acts.num_filters)
    ctx.progress("done", 1.0)
    return summary


def checked_dataset(dataset: Dataset | None, spec: InputSpec) -> Dataset:
    """The dataset, or FAILED_PRECONDITION saying what about it does not fit the model or the task."""
    if dataset is None:
        raise DatasetUnusable("class_filters needs a labelled dataset (arrays x and y); attach one to the job", reason="DATASET_REQUIRED")
    x, y = np.asarray(dataset.x), np.asarray(dataset.y)
    if x.ndim < 2 or tuple(x.shape[1:]) != tuple(spec.shape):
        raise DatasetUnusable(f"dataset x has shape {x.shape}; the model takes (N, {', '.join(map(str, spec.shape))})", reason="DATASET_SHAPE")
    if not np.issubdtype(x.dtype, np.number) or not np.isfinite(x).all():
        raise DatasetUnusable("dataset x must hold finite numbers", reason="DATASET_VALUES")
    if y.ndim != 1 or len(y) != len(x):
        raise DatasetUnusable(f"dataset y must be one label per sample: shape {y.shape} for {len(x)} samples", reason="DATASET_LABELS")
    if not np.issubdtype(y.dtype, np.integer) or (y.size and int(y.min()) < 0):
        raise DatasetUnusable("dataset y must hold non-negative integer class labels", reason="DATASET_LABELS")
    if y.size == 0 or int(y.max()) < 1:
        raise DatasetUnusable("dataset needs samples of at least 2 classes", reason="TOO_FEW_CLASSES")
    return Dataset(x=x, y=y.astype(np.int64), class_names=list(dataset.class_names))


def checked_classes(y: np.ndarray, outputs: int) -> int:
    """The number of classes: the model's outputs, every one of which the labels must use."""
    if int(y.max()) >= outputs:
        raise DatasetUnusable(f"labels go up to {int(y.max())} but the model has {outputs} outputs", reason="LABELS_EXCEED_OUTPUTS")
    if int(y.max()) + 1 < outputs:
        raise DatasetUnusable(
            f"the model has {outputs} outputs but the labels cover only {int(y.max()) + 1} classes; "
            f"give every output class (0..{outputs - 1}) at least 2 samples",
            reason="CLASSES_DO_NOT_MATCH_OUTPUTS",
        )
    return outputs
