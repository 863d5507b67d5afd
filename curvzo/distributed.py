"""One job over many processes: the world a job runs in, and the few collectives a ZO step needs.

Every rank holds the same weights and draws the same directions from the seed, so a step exchanges
scalars, never a gradient or a weight (issue 19). Two parallelisms (``distributed.mode``):

- ``data``: each rank computes the per-example losses of its shard of the minibatch; the vectors
  are gathered in rank order and reduced identically on every rank (:mod:`curvzo.minibatch`).
- ``query``: ranks evaluate different forward passes of one step (MeZO's ±ε, HiZOO's three, LOREN's
  K, q directions); the losses are gathered and every rank applies the same update
  (:meth:`curvzo.optim.base.ZerothOrderOptimizer.evaluate_queries`).

Evaluation is sharded by chunks in both modes. Rank 0 alone writes files and W&B.

The world is set once per process by :func:`start` (``torchrun`` sets ``RANK``/``WORLD_SIZE``) and read
with :func:`world`; without torchrun it is one process and every collective here is the identity.
Exchanges carry JSON (floats round-trip exactly), never pickles. Every exchange carries each rank's
success or error, so an exception on one rank (out of memory, a bad batch) ends the step on all
ranks with :class:`RankFailure` naming that rank, never a hang; a rank that dies outright breaks the
transport, which raises :class:`PeerLost` on the others (and ``torchrun`` stops them).
"""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from curvzo.errors import ConfigError

T = TypeVar("T")
MODES = ("data", "query")
# How long a collective may wait for a peer before the job fails (a rank stuck outside any exchange);
# CURVZO_DIST_TIMEOUT_S changes it. torch's own default is 30 minutes.
DEFAULT_TIMEOUT_S = 900


class PeerLost(RuntimeError):
    """A collective broke because another rank stopped answering (killed, crashed outside an exchange)."""


def _collective(what: str, call: Callable[[], T]) -> T:
    try:
        return call()
    except RuntimeError as err:  # the transport's own words: which socket, not which rank
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        detail = detail.split("] ", 1)[-1][:160]
        raise PeerLost(f"lost contact with another rank during {what} (it stopped or was killed; torchrun's "
                       f"report names it): {detail}") from None


class RankFailure(RuntimeError):
    """An exception on one rank, raised on every rank at the exchange it would have joined."""

    def __init__(self, rank: int, message: str) -> None:
        super().__init__(f"rank {rank} failed: {message}")
        self.rank = rank


@dataclass(frozen=True)
class World:
    """This process's place in the job: ``rank`` of ``size`` processes; ``mode`` is data or query."""

    rank: int = 0
    size: int = 1
    mode: str = "data"

    @property
    def active(self) -> bool:
        """More than one process: the collectives exchange something."""
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the run's files, checkpoints and W&B."""
        return self.rank == 0

    @property
    def data_parallel(self) -> bool:
        return self.active and self.mode == "data"

    @property
    def query_parallel(self) -> bool:
        return self.active and self.mode == "query"


_WORLD = World()


def world() -> World:
    """The world of this process (one process unless :func:`start` joined a group)."""
    return _WORLD


def set_mode(mode: str) -> World:
    """Choose the parallelism from the config (``distributed.mode``) once the job knows it."""
    global _WORLD
    if mode not in MODES:
        raise ConfigError(f"distributed.mode must be one of {', '.join(MODES)}, got {mode!r}")
    _WORLD = World(_WORLD.rank, _WORLD.size, mode)
    return _WORLD


def launched_by_torchrun() -> bool:
    """Whether this process is one of several started by torchrun (or by SLURM, once :func:`start` has read it)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _export_slurm_tasks() -> None:
    """Under SLURM with several tasks (the submitit launcher's ``tasks_per_node``, or ``srun -n``), set the
    variables torchrun would have set (rank, world size, rendezvous address) from SLURM's, with submitit."""
    if "WORLD_SIZE" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return
    try:
        from submitit.helpers import TorchDistributedEnvironment
    except ImportError:  # without submitit, launch the tasks with torchrun
        return
    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def start() -> World:
    """Join the process group torchrun (or SLURM) described (nccl on CUDA, gloo on CPU); idempotent."""
    global _WORLD
    _export_slurm_tasks()
    if not launched_by_torchrun():
        return _WORLD
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        timeout = timedelta(seconds=float(os.environ.get("CURVZO_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S)))
        dist.init_process_group(backend=backend, timeout=timeout)
    _WORLD = World(dist.get_rank(), dist.get_world_size(), _WORLD.mode)
    return _WORLD


def stop(*, finished: bool = True) -> None:
    """Leave the process group (at the end of the job, on every rank).

    A job that ``finished`` first waits at a barrier for every rank to get here: a rank that tore down
    its sockets while a peer still had its last collective in flight could abort that peer (gloo's
    transport thread ends the process, and torchrun reports a finished job as failed). After a failure
    no barrier: a lost peer would keep the others waiting for the whole timeout."""
    global _WORLD
    if dist.is_initialized():
        if finished and _WORLD.active:
            try:
                dist.barrier()
            except RuntimeError:  # a peer is gone: nothing left to wait for
                pass
        dist.destroy_process_group()
        gc.collect()  # free the group's transport while the interpreter is whole, not during its shutdown
    _WORLD = World(mode=_WORLD.mode)


# exchanges ------------------------------------------------------------------------------------------
def _attempt(fn: Callable[[], T]) -> tuple[bool, Any]:
    try:
        return True, fn()
    except Exception as err:  # noqa: BLE001 - any error: the other ranks learn of it here instead of waiting
        message = str(err).splitlines()[0] if str(err) else ""
        return False, f"{type(err).__name__}: {message}"


def exchange(fn: Callable[[], T]) -> list[T]:
    """``fn()`` on this rank, and every rank's result in rank order (one process: ``[fn()]``).
    An exception on any rank becomes :class:`RankFailure` on all of them."""
    if not _WORLD.active:
        return [fn()]
    ok, value = _attempt(fn)
    gathered = _collective("an exchange of losses", lambda: _all_gather_json([ok, value]))
    for rank, (ok_r, value_r) in enumerate(gathered):
        if not ok_r:
            raise RankFailure(rank, value_r)
    return [value_r for _, value_r in gathered]


def owned(count: int) -> list[int]:
    """The items of ``count`` this rank computes when work is dealt round-robin (all of them in one process)."""
    return list(range(_WORLD.rank, count, _WORLD.size)) if _WORLD.active else list(range(count))


def map_dealt(fn: Callable[[T], Any], items: Sequence[T]) -> list[Any]:
    """``[fn(item) for item in items]``, with the items dealt round-robin over the ranks and the
    results gathered back into item order on every rank (the same list one process computes)."""
    if not _WORLD.active:
        return [fn(item) for item in items]
    mine = owned(len(items))
    parts = exchange(lambda: [fn(items[i]) for i in mine])
    results: list[Any] = [None] * len(items)
    for rank, values in enumerate(parts):
        for i, value in zip(range(rank, len(items), _WORLD.size), values):
            results[i] = value
    return results


def shard_bounds(count: int, size: int | None = None) -> list[tuple[int, int]]:
    """Contiguous [start, stop) shards of ``count`` items over ``size`` ranks: the first ``count % size``
    ranks take one item more (a rank may get none when the batch is smaller than the world)."""
    size = _WORLD.size if size is None else size
    base, extra = divmod(count, size)
    bounds, start = [], 0
    for rank in range(size):
        stop = start + base + (1 if rank < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def agreed_stop(requested: int | None) -> int | None:
    """A stop signal any rank received, agreed on by all ranks at a step boundary (the largest signal
    number wins, so every rank stops with the same status); one process: ``requested``."""
    if not _WORLD.active:
        return requested
    flag = torch.tensor([requested or 0], dtype=torch.int64, device=_collective_device())
    _collective("the stop check", lambda: dist.all_reduce(flag, op=dist.ReduceOp.MAX))
    return int(flag.item()) or None


def broadcast(value: T) -> T:
    """Rank 0's ``value`` (JSON-serialisable) on every rank."""
    if not _WORLD.active:
        return value
    return _collective("a broadcast from rank 0", lambda: _broadcast_json(value))


def _encode(value: Any) -> torch.Tensor:
    data = json.dumps(value).encode("utf-8")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).to(_collective_device()) if data else \
        torch.empty(0, dtype=torch.uint8, device=_collective_device())


def _decode(data: torch.Tensor) -> Any:
    return json.loads(bytes(data.cpu().tolist()).decode("utf-8"))


def _all_gather_json(value: Any) -> list[Any]:
    """Every rank's ``value`` in rank order, as JSON bytes in padded uint8 tensors (no pickles)."""
    mine = _encode(value)
    size = torch.tensor([mine.numel()], dtype=torch.int64, device=mine.device)
    sizes = [torch.zeros_like(size) for _ in range(_WORLD.size)]
    dist.all_gather(sizes, size)
    longest = max(int(s.item()) for s in sizes)
    padded = torch.zeros(longest, dtype=torch.uint8, device=mine.device)
    padded[:mine.numel()] = mine
    parts = [torch.empty_like(padded) for _ in range(_WORLD.size)]
    dist.all_gather(parts, padded)
    return [_decode(part[:int(n.item())]) for part, n in zip(parts, sizes)]


def _broadcast_json(value: Any) -> Any:
    data = _encode(value) if _WORLD.is_main else None
    size = torch.tensor([data.numel() if data is not None else 0], dtype=torch.int64, device=_collective_device())
    dist.broadcast(size, src=0)
    if data is None:
        data = torch.empty(int(size.item()), dtype=torch.uint8, device=size.device)
    dist.broadcast(data, src=0)
    return _decode(data)


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
