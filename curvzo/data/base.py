"""The task interface, and the base for tasks with a hub copy and official local files."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curvzo.data.readers import load_hub_split, require_task_dir
from curvzo.errors import ConfigError
from curvzo.example import Example
from curvzo.metric_objective import check_train_objective
from curvzo.objectives import CandidateClassification


@dataclass(frozen=True)
class Pools:
    """A task's full train pool and test pool, as normalised rows in their original order.

    ``source`` is one line saying where the rows came from (hub id or local files, and any
    offline rule applied), for logs and run summaries.
    """

    train: list[dict[str, Any]]
    test: list[dict[str, Any]]
    source: str


class Task(abc.ABC):
    """A task: where its pools come from and how one row renders to an :class:`Example`.

    ``dev_cap`` caps ``num_dev`` for small tasks (MeZO uses 100 for CB); ``None`` means no cap.
    ``train_objective`` is what a job trains on: ``loss`` (``objective``'s own) or ``metric`` (minus
    its metric, curvzo.metric_objective); the job applies it, evaluation never changes.
    """

    name: str
    dev_cap: int | None
    objective = CandidateClassification()  # how the task trains and is scored (curvzo.objectives); subclasses override

    def __init__(self, name: str, dev_cap: int | None = None, train_objective: str = "loss") -> None:
        if dev_cap is not None and (isinstance(dev_cap, bool) or not isinstance(dev_cap, int) or dev_cap < 0):
            raise ConfigError(f"task {name}: dev_cap must be a non-negative integer or null, got {dev_cap!r}")
        self.name = name
        self.dev_cap = dev_cap
        self.train_objective = check_train_objective(train_objective)

    @abc.abstractmethod
    def load_pools(self, data_dir: str | None) -> Pools:
        """Load the train and test pools: from the hub when ``data_dir`` is None, else local files."""

    @abc.abstractmethod
    def render(self, row: dict[str, Any]) -> Example:
        """Render one normalised row to its prompt, options and gold option index."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class OfficialTask(Task):
    """A task whose pools come either from a hub dataset or from official files under a data dir.

    Subclasses turn a hub record or an official-file record into the task's normalised row
    (the hub schema), so both sources render identically.
    """

    def __init__(
        self,
        name: str,
        hub_id: str,
        hub_config: str | None,
        hub_train_split: str,
        hub_test_split: str,
        local_subdir: str,
        dev_cap: int | None = None,
        train_objective: str = "loss",
    ) -> None:
        super().__init__(name, dev_cap, train_objective)
        self.hub_id = hub_id
        self.hub_config = hub_config
        self.hub_train_split = hub_train_split
        self.hub_test_split = hub_test_split
        self.local_subdir = local_subdir

    def load_pools(self, data_dir: str | None) -> Pools:
        """Load the pools from the hub (``data_dir`` None) or from ``data_dir/local_subdir``."""
        if data_dir is None:
            return self._load_hub()
        return self.load_local(require_task_dir(data_dir, self.local_subdir))

    def _load_hub(self) -> Pools:
        train = [self.normalise_hub(record, where) for where, record in
                 load_hub_split(self.hub_id, self.hub_config, self.hub_train_split)]
        test = [self.normalise_hub(record, where) for where, record in
                load_hub_split(self.hub_id, self.hub_config, self.hub_test_split)]
        name = f"{self.hub_id}/{self.hub_config}" if self.hub_config else self.hub_id
        return Pools(train, test, f"hub {name} (train pool {self.hub_train_split}, test pool {self.hub_test_split})")

    @abc.abstractmethod
    def load_local(self, task_dir: Path) -> Pools:
        """Read the pools from the task's official files in ``task_dir``."""

    @abc.abstractmethod
    def normalise_hub(self, record: dict[str, Any], where: str) -> dict[str, Any]:
        """Check one hub record and keep the fields the template uses."""
