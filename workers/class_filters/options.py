"""ClassFiltersOptions (proto) as a checked TaskOptions (workers.options); every default is stated here once."""

from __future__ import annotations

from dataclasses import dataclass

from workers.class_filters.information import BINNED, ESTIMATORS
from workers.class_filters.ranking import CONTRIBUTION, RANKINGS
from workers.errors import BadOptions
from workers.options import TaskOptions, option


@dataclass(frozen=True)
class Options(TaskOptions):
    """ClassFiltersOptions."""

    TASK = "class_filters"

    layer: str = option("", "module name; empty = the input of the head (the last affine layer)")
    k: int = option(5, "fixed subset size: filters per class, >= 1")
    mass_coverage: float = option(0.9, "share of the positive contribution the coverage subset holds, in (0, 1]")
    accuracy_retention: float = option(0.99, "share of the class's F1 the retention subset keeps, in (0, 1]")
    ranking: str = option(CONTRIBUTION, "contribution | frequency")
    mi_estimator: str = option(BINNED, "binned (bits) | knn (nats)")
    bootstrap: int = option(20, "resamples for subset stability, in [0, 1000]; 0 = skip")
    seed: int = option(0, "seed of the split, the bootstraps and the random ablations")
    fit_fraction: float = option(0.7, "share of each class used to fit the ranking, in (0, 1); the rest evaluates")

    def check(self) -> None:
        """INVALID_ARGUMENT for values that cannot mean anything (k against the layer width is checked later)."""
        problems = []
        if self.k < 1:
            problems.append(f"k must be at least 1, got {self.k}")
        if not 0.0 < self.mass_coverage <= 1.0:
            problems.append(f"mass_coverage must be in (0, 1], got {self.mass_coverage}")
        if not 0.0 < self.accuracy_retention <= 1.0:
            problems.append(f"accuracy_retention must be in (0, 1], got {self.accuracy_retention}")
        if self.ranking not in RANKINGS:
            problems.append(f"ranking must be one of {', '.join(RANKINGS)}, got {self.ranking!r}")
        if self.mi_estimator not in ESTIMATORS:
            problems.append(f"mi_estimator must be one of {', '.join(ESTIMATORS)}, got {self.mi_estimator!r}")
        if not 0 <= self.bootstrap <= 1000:
            problems.append(f"bootstrap must be in [0, 1000], got {self.bootstrap}")
        if not 0.0 < self.fit_fraction < 1.0:
            problems.append(f"fit_fraction must be in (0, 1), got {self.fit_fraction}")
        if problems:
            raise BadOptions("; ".join(problems), reason="BAD_CLASS_FILTERS_OPTIONS")

