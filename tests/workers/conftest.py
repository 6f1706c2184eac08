"""Fixtures shared by the worker tests."""

from __future__ import annotations

from typing import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Every worker test runs with one torch thread (as on the shared CI cores), restored afterwards.

    Many of these tests fork a sandboxed model process from the pytest process itself, which has run
    multi-threaded torch ops in earlier tests (the e2e fixtures build models in process). libgomp's thread
    pool does not survive fork(): a child that starts a parallel region with more than one thread waits
    forever for pool threads that exist only in the parent (seen: a model process stuck in
    gomp_team_barrier_wait_end under Unfold3dCopyCPU). With one thread no pool thread is ever asked for. A
    worker's horses are forked from a parent that never computes, so there the model process keeps all its
    threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
