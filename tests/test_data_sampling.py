"""MeZO's sampling rules (protocol.md §3.1) on in-memory pools."""

from __future__ import annotations

import numpy as np
import pytest

from curvzo.data import Example, Pools, Task, load_splits
from curvzo.data.sampling import sample_test_indices, sample_train_dev_indices
from curvzo.errors import ConfigError


class CountingTask(Task):
    """Rows are their own pool index, so sampled examples reveal which rows were taken."""

    def __init__(self, train_size: int, test_size: int, dev_cap: int | None = None) -> None:
        super().__init__("counting", dev_cap)
        self.pools = Pools([{"i": i} for i in range(train_size)], [{"i": i} for i in range(test_size)], "memory")

    def load_pools(self, data_dir: str | None) -> Pools:
        return self.pools

    def render(self, row: dict) -> Example:
        return Example(f"row {row['i']}", ("a", "b"), row["i"] % 2)


def indices(examples: list[Example]) -> list[int]:
    return [int(example.prompt.split()[1]) for example in examples]


@pytest.fixture
def global_numpy_state():
    """Restore numpy's global generator, which the MeZO comparison reseeds."""
    state = np.random.get_state()
    yield
    np.random.set_state(state)


def test_matches_mezo_global_numpy_seeding(global_numpy_state):
    # MeZO calls np.random.seed(seed) then np.random.permutation; the protocol says this is
    # the same stream as RandomState(seed).
    np.random.seed(3)
    mezo_sample = np.random.permutation(200)[:30].tolist()
    train, dev = sample_train_dev_indices(200, 20, 10, 3)
    assert train == mezo_sample[:20] and dev == mezo_sample[20:]
    np.random.seed(3)
    assert sample_test_indices(50, 40, 3) == np.random.permutation(50)[:40].tolist()


def test_dev_is_the_tail_of_the_sample_and_disjoint_from_train():
    splits = load_splits(CountingTask(100, 10), None, num_train=30, num_dev=20, num_test=5, data_seed=0)
    sample = np.random.RandomState(0).permutation(100)[:50].tolist()
    assert indices(splits.train) == sample[:30]
    assert indices(splits.dev) == sample[30:]
    assert set(indices(splits.train)).isdisjoint(indices(splits.dev))
    assert indices(splits.test) == np.random.RandomState(0).permutation(10)[:5].tolist()
    assert splits.source == "memory"


def test_small_pool_shrinks_train_not_dev():
    # WSC under MeZO: a 554-row pool gives 54 train and 500 dev.
    splits = load_splits(CountingTask(554, 104), None, 1000, 500, 1000, data_seed=0)
    assert (len(splits.train), len(splits.dev), len(splits.test)) == (54, 500, 104)


def test_dev_cap_applies_before_sampling():
    splits = load_splits(CountingTask(250, 56, dev_cap=100), None, 1000, 500, 1000, data_seed=0)
    assert (len(splits.train), len(splits.dev), len(splits.test)) == (150, 100, 56)
    assert indices(splits.dev) == np.random.RandomState(0).permutation(250)[150:250].tolist()


def test_zero_dev_keeps_every_sampled_row_in_train():
    splits = load_splits(CountingTask(100, 10), None, 40, 0, 10, data_seed=1)
    assert (len(splits.train), len(splits.dev)) == (40, 0)


def test_different_seeds_give_different_samples():
    first = load_splits(CountingTask(1000, 1000), None, 100, 50, 100, data_seed=0)
    second = load_splits(CountingTask(1000, 1000), None, 100, 50, 100, data_seed=1)
    assert first.train != second.train and first.dev != second.dev and first.test != second.test
    assert first == load_splits(CountingTask(1000, 1000), None, 100, 50, 100, data_seed=0)


@pytest.mark.parametrize(("sizes", "message"), [
    ((-1, 500, 1000, 0), "num_train must be a non-negative integer"),
    ((1000, -5, 1000, 0), "num_dev must be a non-negative integer"),
    ((1000, 500, 2.5, 0), "num_test must be a non-negative integer"),
    ((1000, 500, 1000, -1), r"data_seed must be an integer in \[0, 2\*\*32\)"),
    ((1000, 500, 1000, 2**32), r"data_seed must be an integer in \[0, 2\*\*32\)"),
])
def test_invalid_sizes_are_config_errors(sizes, message):
    with pytest.raises(ConfigError, match=message):
        load_splits(CountingTask(100, 10), None, *sizes)


def test_pool_without_room_for_training_is_a_config_error():
    with pytest.raises(ConfigError, match="train pool of 80 examples leaves no training examples"):
        load_splits(CountingTask(80, 10), None, 1000, 500, 1000, data_seed=0)
