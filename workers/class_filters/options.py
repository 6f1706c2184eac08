"""ClassFiltersOptions (proto) as a checked dataclass; every default is stated here once."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from workers.class_filters.information import BINNED, ESTIMATORS
from workers.class_filters.ranking import CONTRIBUTION, RANKINGS
from workers.errors import BadOptions


@dataclass(frozen=True)
class Options:
    layer: str = ""  # module name; empty = the input of the last Linear layer
    k: int = 5  # fixed subset size (filters per class)
    mass_coverage: float = 0.9  # share of positive contribution the coverage subset holds
    accuracy_retention: float = 0.99  # share of the class's F1 the retention subset keeps
    ranking: str = CONTRIBUTION  # "contribution" | "frequency"
    mi_estimator: str = BINNED  # "binned" | "knn"
    bootstrap: int = 20  # resamples for subset stability (0 = skip)
    seed: int = 0
    fit_fraction: float = 0.7  # share of each class used to fit the ranking; the rest evaluates

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "Options":
        """Read the options JSON (proto or JSON field names; int64 may arrive as a string) and check it."""
        given = {_snake(key): value for key, value in raw.items() if value is not None and value != ""}
        unknown = sorted(set(given) - set(cls.__dataclass_fields__))
        if unknown:
            raise BadOptions(f"unknown class_filters options: {', '.join(unknown)}", reason="UNKNOWN_OPTION")
        try:
            values = {name: type(getattr(cls, name))(given[name]) if name in given else getattr(cls, name) for name in cls.__dataclass_fields__}
        except (TypeError, ValueError) as exc:
            raise BadOptions(f"class_filters options have a value of the wrong type: {exc}", reason="BAD_OPTION_TYPE") from exc
        options = cls(**values)
        options.check()
        return options

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


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
