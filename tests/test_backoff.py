"""kernelscope.backoff, the one retry policy of the SDK and the workers: pauses grow from the first to the longest,
jitter stays within its band, and patience counts from the first failure (an answer renews it)."""

from __future__ import annotations

import pytest

from kernelscope import backoff as backoff_module
from kernelscope.backoff import Backoff


def test_pauses_grow_to_the_longest_without_jitter() -> None:
    backoff = Backoff(60.0, first_s=0.1, growth=2.0, longest_s=0.5, jitter=0.0)
    assert [backoff.pause() for _ in range(5)] == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])
    backoff.reset()
    assert backoff.pause() == pytest.approx(0.1)


def test_jitter_scales_each_pause_within_its_band_and_not_the_growth() -> None:
    backoff = Backoff(60.0)  # the defaults: 0.1 s doubling to 2 s, jitter 0.5
    for base in (0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0):
        pause = backoff.pause()
        assert pause is not None and 0.5 * base <= pause < 1.5 * base


def test_patience_counts_from_the_first_failure_and_an_answer_renews_it(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(backoff_module.time, "monotonic", lambda: now[0])
    assert Backoff(0.0).pause() is None  # patience 0: never retried
    backoff = Backoff(5.0, jitter=0.0)
    now[0] += 50.0  # time before the first failure does not count
    assert backoff.pause() == pytest.approx(0.1) and backoff.waited() == 0.0
    now[0] += 4.9
    assert backoff.pause() == pytest.approx(0.2)  # the last pause may end past the patience
    now[0] += 0.1
    assert backoff.pause() is None
    backoff.answered()
    assert backoff.pause() == pytest.approx(0.4)  # patience afresh, the pauses keep growing
