"""The `class_filters` task: which few filters of a layer carry each class's decision.

Options: ClassFiltersOptions, read into workers.class_filters.options.Options (each field's default and unit). Needs a labelled dataset whose labels are output
indices of the head: any subset of its classes (3 of Kinetics' 400), each with at least 2 samples; x is
raw input (N, *input shape), normalised here.

Heads: whatever last affine layer the network runs, on pooled features, channels-first or channels-last
(a Linear between permutes, pytorchvideo), a 1 × 1 × 1 convolution (S3D), followed or not by a Softmax
(X3D): the logits before any Softmax are attributed (see head.py).

Restricted model: each class in the dataset scores with its subset's terms only; the head's other
outputs keep their full logits and compete in every argmax, as they do in the full model.

Summary JSON (also written as class_filters/class_filters.json):
    layer               hooked module ("<head>:input" by default: the head's input averaged over its positions)
    num_filters, num_classes (classes in the dataset, analysed), num_outputs (the head's), class_names
    ranking             "contribution" | "frequency"
    attribution         "exact_logit_split" (the layer feeds the head) | "gradient_x_activation"
    restriction         "decomposed_head" | "mean_ablation" (what removing a filter means)
    logits              what is attributed: "model_output" (the model returns the head's logits, maybe plus a
                        constant per class) | "pre_softmax" / "pre_log_softmax" (the model returns (log)softmax
                        of them) | "head_output" (the model transforms them otherwise)
    head                {module, kind: "linear" | "pointwise_conv", layout: "channels_last" | "channels_first",
                        positions: how many (T, H, W) positions its input averages}, or None
    mi_estimator, k, fit_samples, eval_samples
    classes[]           per class in the dataset:
        class, name         output index, name
        subset_k            S_c: the k best filters (positive score only, so possibly fewer), best first
        coverage_size       shortest ranking prefix with mass_coverage of the positive contribution
        retention_size      shortest ranking prefix whose restricted logit keeps accuracy_retention of the
                            class's F1; None where the full model has no skill on the class (skill_p >= 0.01)
        skill_p             chance of the full model's class hits on eval if its predictions ignored the labels
        recall_full         class recall of the full model on eval
        recall_restricted   class recall when every class's logit uses only its S_c
        ablation            {subset_drop, random_drop, complement_drop}: recall lost removing S_c,
                            a random same-size subset (mean of 5 draws), everything but S_c (None: nothing to remove)
        stability_jaccard   mean Jaccard of S_c with bootstrap rankings (None if bootstrap = 0 or S_c is empty)
        mi_top_k_jaccard    Jaccard of S_c with the k filters of highest MI for the class
    global              mis_binned_bits, mis_binned_bits_shuffled (binned MI, bits; label-shuffled baseline),
                        mis_knn_nats, mis_knn_nats_shuffled (Ross's kNN MI in nats, the MIS of Liang et al.;
                        None with mis_knn_skipped saying why when the set is too large and not asked for),
                        mis, mis_shuffled (kept for gates: the MIS of mi_estimator, in bits),
                        psi_0_5 (Badola's Ψ(0.5)), density (share of filters in some S_c), mean_overlap (mean
                        pairwise Jaccard of S_c), accuracy_full, accuracy_restricted (eval, argmax over all
                        outputs), compute_saving (1 − Σ|S_c| / (C·D)), selectivity {mean, median} of Leavitt's
                        class selectivity index

Artifacts under class_filters/: class_filters.json, matrices.npz (contribution, mutual_information (bits,
of mi_estimator), mi_binned_bits, mi_knn_nats (when computed), selectivity, frequency: one row per class
in the dataset; classes (their output indices); subsets (-1 padded), coverage_sizes, retention_sizes
(-1: none), class_names), heatmap.png (contribution, columns ordered so the subsets show as blocks),
subset_sizes.png.
"""

from __future__ import annotations

import numpy as np

from workers.analysis import Analysis, Outcome
from workers.class_filters.activations import collect, output_width
from workers.class_filters.analysis import analyse
from workers.class_filters.figures import heatmap, subset_sizes
from workers.class_filters.options import Options
from workers.class_filters.restriction import restriction_for
from workers.class_filters.split import present_classes, stratified_split
from workers.context import TaskContext
from workers.dataset import Dataset
from workers.errors import DatasetUnusable
from workers.input_spec import InputSpec


class ClassFiltersAnalysis(Analysis[Options]):
    options = Options

    def run(self, ctx: TaskContext, options: Options) -> Outcome:
        """Rank, size, restrict and ablate each class's filter subset (see the module doc for the summary)."""
        assert ctx.dataset is not None  # the catalogue says class_filters needs one: the job checked
        dataset = checked_dataset(ctx.dataset, ctx.model.input_spec)
        x, y = dataset.x, dataset.y
        outputs = output_width(ctx.model, x, ctx.device)
        classes = checked_classes(y, outputs)
        split = stratified_split(y, options.fit_fraction, options.seed)

        ctx.progress("forward pass", 0.0)
        acts = collect(
            ctx.model,
            x,
            y,
            split.fit,
            layer=options.layer,
            device=ctx.device,
            on_fraction=lambda f: ctx.progress("forward pass", 0.5 * f),
            num_classes=outputs,
        )
        restriction = restriction_for(acts, split.eval, ctx.model, x, ctx.device, classes)
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
        out = ctx.out_dir
        summary = result.summary
        np.savez_compressed(
            out / "matrices.npz",
            **{name: matrix.astype(np.float32) for name, matrix in result.matrices.items()},
            subsets=result.subsets.astype(np.int64),
            classes=result.classes.astype(np.int64),
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
        return Outcome(summary)


ANALYSIS = ClassFiltersAnalysis()


def checked_dataset(dataset: Dataset, spec: InputSpec) -> Dataset:
    """The dataset, or FAILED_PRECONDITION saying what about it does not fit the model or the task."""
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


def checked_classes(y: np.ndarray, outputs: int) -> np.ndarray:
    """The classes the dataset holds (output indices of the head): at least two, all below `outputs`."""
    if int(y.max()) >= outputs:
        raise DatasetUnusable(f"labels go up to {int(y.max())} but the model has {outputs} outputs", reason="LABELS_EXCEED_OUTPUTS")
    classes = present_classes(y)
    if len(classes) < 2:
        raise DatasetUnusable(f"dataset needs samples of at least 2 classes; it holds only class {int(classes[0])}", reason="TOO_FEW_CLASSES")
    return classes
