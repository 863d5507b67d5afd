"""MeZO's train/dev/test sampling (protocol.md §3.1), reproduced exactly."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from curvzo.data.base import Task
from curvzo.errors import ConfigError
from curvzo.example import Example


@dataclass(frozen=True)
class Splits:
    """Rendered train, dev and test examples of one task, and where their pools came from."""

    train: list[Example]
    dev: list[Example]
    test: list[Example]
    source: str


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _check_seed(value: Any) -> int:
    # RandomState accepts exactly the 32-bit unsigned range.
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < 2**32:
        raise ConfigError(f"data_seed must be an integer in [0, 2**32), got {value!r}")
    return int(value)


def sample_train_dev_indices(
    pool_size: int, num_train: int, num_dev: int, data_seed: int
) -> tuple[list[int], list[int]]:
    """Indices into the train pool of the train and dev examples, in sampled order.

    MeZO permutes the pool with ``RandomState(data_seed)``, keeps the first
    ``num_train + num_dev`` positions (the whole pool if smaller), and makes the *last*
    ``num_dev`` of them the dev set; so a small pool shrinks train, not dev (WSC: 54/500).
    """
    sample = np.random.RandomState(data_seed).permutation(pool_size)[: num_train + num_dev].tolist()
    # Slicing at len - num_dev (not -num_dev) keeps num_dev == 0 from taking the whole sample.
    cut = max(len(sample) - num_dev, 0)
    return sample[:cut], sample[cut:]


def sample_test_indices(pool_size: int, num_test: int, data_seed: int) -> list[int]:
    """Indices into the test pool: an independent ``RandomState(data_seed)`` permutation, truncated."""
    return np.random.RandomState(data_seed).permutation(pool_size)[:num_test].tolist()


def load_splits(task: Task, data_dir: str | None, num_train: int, num_dev: int, num_test: int,
                data_seed: int) -> Splits:
    """Load ``task``'s pools, sample train/dev/test as MeZO does, and render them.

    ``num_dev`` is first capped at ``task.dev_cap`` when the task sets one (CB: 100).
    """
    num_train = _check_count("num_train", num_train)
    num_dev = _check_count("num_dev", num_dev)
    num_test = _check_count("num_test", num_test)
    data_seed = _check_seed(data_seed)
    if task.dev_cap is not None:
        num_dev = min(num_dev, task.dev_cap)

    pools = task.load_pools(data_dir)
    if num_train > 0 and len(pools.train) <= num_dev:
        raise ConfigError(
            f"task {task.name}: a train pool of {len(pools.train)} examples leaves no training examples "
            f"after num_dev={num_dev}"
        )
    train_idx, dev_idx = sample_train_dev_indices(len(pools.train), num_train, num_dev, data_seed)
    test_idx = sample_test_indices(len(pools.test), num_test, data_seed)
    return Splits(
        train=[task.render(pools.train[i]) for i in train_idx],
        dev=[task.render(pools.train[i]) for i in dev_idx],
        test=[task.render(pools.test[i]) for i in test_idx],
        source=pools.source,
    )
