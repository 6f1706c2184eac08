"""A labelled sample set: what class_filters reads from an uploaded NPZ (x, y, class_names)."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np

from workers.errors import DatasetUnusable


@dataclass
class Dataset:
    """x: (N, *sample shape) raw values; y: (N,) integer labels in [0, C)."""

    x: np.ndarray
    y: np.ndarray
    class_names: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return int(self.y.max()) + 1 if self.y.size else 0

    @classmethod
    def from_npz(cls, data: bytes) -> "Dataset":
        """Parse an NPZ without unpickling anything (allow_pickle=False)."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                if "x" not in z or "y" not in z:
                    raise DatasetUnusable(f"dataset needs arrays 'x' and 'y'; found {sorted(z.files)}", reason="DATASET_FIELDS")
                x, y = z["x"], z["y"]
                names = [str(s) for s in z["class_names"]] if "class_names" in z else []
        except DatasetUnusable:
            raise
        except Exception as exc:  # noqa: BLE001 - any parse failure is the user's file
            raise DatasetUnusable(f"not a readable NPZ: {exc}", reason="DATASET_UNREADABLE") from exc
        return cls(x=x, y=y.astype(np.int64), class_names=names)
