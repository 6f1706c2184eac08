"""One embedded stack (Redis, server, a worker: separate processes) shared by the end-to-end tests."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from deploy.stack import LocalStack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with LocalStack(workers=1, data_dir=tmp_path_factory.mktemp("stack")) as running:
        yield running


@pytest.fixture()
def client(stack: LocalStack):  # noqa: ANN201 - sdk.Client
    import sdk

    with sdk.Client(stack.target) as c:
        yield c


@pytest.fixture(scope="session")
def c3d_pt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained C3DSmall exported with torch.export (weights seeded)."""
    import torch

    from workers.samples.models import C3DSmall, export_pt2

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "c3d.pt2"
    export_pt2(C3DSmall().eval(), path)
    return path
