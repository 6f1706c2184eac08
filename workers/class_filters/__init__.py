"""class_filters: which small subset of a layer's filters carries each class's decision.

    head          the last affine layer (Linear, channels-last Linear, 1 × 1 × 1 conv) and its logits
    activations   one hooked, batched forward pass -> per-sample features and contributions
    ranking       contribution (default) and Badola's frequency ranking
    information   binned (bits) / kNN (nats) mutual information, MIS and its shuffled baseline
    selectivity   Leavitt's class selectivity index, Badola's Ψ(0.5)
    subsets       fixed k, mass coverage, accuracy retention; overlap, density, compute saving
    restriction   decomposed head / mean ablation, ablation studies
    stability     bootstrap Jaccard of the subsets
    analysis      all of the above after the forward pass
    figures       heat map and subset-size bars

The task itself is workers.analyses.class_filters.
"""

from workers.class_filters.activations import LayerActivations, collect, find_head
from workers.class_filters.analysis import ClassFilters, analyse
from workers.class_filters.options import Options
from workers.class_filters.restriction import AblationRestriction, HeadRestriction, restriction_for
from workers.class_filters.split import Split, present_classes, stratified_split

__all__ = [
    "AblationRestriction",
    "ClassFilters",
    "HeadRestriction",
    "LayerActivations",
    "Options",
    "Split",
    "analyse",
    "present_classes",
    "collect",
    "find_head",
    "restriction_for",
    "stratified_split",
]
