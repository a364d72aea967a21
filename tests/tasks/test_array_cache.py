"""The data cache: generated data sets are made once, survive bad files, and never block a run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmark.cache import CACHE_ENV
from benchmark.tasks.array_cache import cached_arrays


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


class Maker:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> tuple[np.ndarray, ...]:
        self.calls += 1
        return np.arange(6.0).reshape(2, 3), np.array([1, 0], dtype=np.int64)


def test_second_load_reads_the_cache_instead_of_making(cache: Path) -> None:
    make = Maker()
    first = cached_arrays("toy", {"n": 2}, make)
    second = cached_arrays("toy", {"n": 2}, make)
    assert make.calls == 1
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype
    assert [p.name for p in cache.iterdir()] == [next(cache.glob("toy-*.npz")).name], "no temporary left"


def test_other_arguments_are_made_separately(cache: Path) -> None:
    make = Maker()
    cached_arrays("toy", {"n": 2}, make)
    cached_arrays("toy", {"n": 3}, make)
    assert make.calls == 2


def test_an_unreadable_file_is_made_again_and_replaced(cache: Path) -> None:
    make = Maker()
    cached_arrays("toy", {"n": 2}, make)
    (path,) = cache.glob("toy-*.npz")
    path.write_bytes(path.read_bytes()[:40])  # a truncated file, as a crash mid-copy would leave
    again = cached_arrays("toy", {"n": 2}, make)
    assert make.calls == 2
    np.testing.assert_array_equal(again[0], np.arange(6.0).reshape(2, 3))
    cached_arrays("toy", {"n": 2}, make)
    assert make.calls == 2, "the replaced file reads"


def test_an_unwritable_cache_warns_and_still_returns_the_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    monkeypatch.setenv(CACHE_ENV, str(blocker / "cache"))
    with pytest.warns(UserWarning, match="not writable"):
        x, y = cached_arrays("toy", {"n": 2}, Maker())
    assert x.shape == (2, 3)
    assert y.tolist() == [1, 0]


def test_mnist1d_from_the_cache_equals_a_fresh_generation(cache: Path) -> None:
    from benchmark.tasks.mnist1d import mnist1d_arrays

    fresh = mnist1d_arrays.__wrapped__(200, 7)
    assert len(list(cache.glob("mnist1d-*.npz"))) == 1
    cached = mnist1d_arrays.__wrapped__(200, 7)
    for a, b in zip(fresh, cached, strict=True):
        assert a.dtype == b.dtype
        assert a.equal(b)
