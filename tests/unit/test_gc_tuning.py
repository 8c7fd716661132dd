"""deploy/gc_tuning.py: the start-up heap frozen, young collections batched."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from deploy.gc_tuning import OLDER_THRESHOLDS, YOUNG_THRESHOLD, tune_gc


@pytest.fixture
def restore_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


@pytest.mark.usefixtures("restore_gc")
def test_tune_gc_freezes_and_raises_the_thresholds() -> None:
    tune_gc()
    assert gc.get_threshold() == (YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
    assert gc.get_freeze_count() > 1_000  # at least the modules pytest imported


@pytest.mark.usefixtures("restore_gc")
def test_cycles_are_still_collected() -> None:
    tune_gc()

    class Node:
        def __init__(self) -> None:
            self.me = self

    for _ in range(10):
        Node()
    assert gc.collect() >= 10
