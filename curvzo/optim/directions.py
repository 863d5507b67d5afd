"""Seeded directions: z_b is a pure function of (step seed, block index), drawn in parallel pieces.

Every zeroth-order method draws its perturbations here (optimizers.md §1.2). RNG contract v2
(``streams.RNG_CONTRACT_VERSION``): the flattened z_b is cut into sub-chunks of
``sub_chunk_numel(device)`` elements (64K on CPU, 4M elsewhere); sub-chunk c is drawn in float32 by
a dedicated ``torch.Generator`` on the block's device seeded with mix64(seed, b, c). So z_b never
depends on the global RNG, on the order blocks are visited, on which other blocks a sparse method
selects, or on how many threads draw it.

On CPU the Gaussian kernel is single-threaded and dominates a step's overhead, so
:meth:`DirectionSampler.for_each_piece` hands pieces (runs of sub-chunks) to ``workers`` threads,
each of which draws its piece and then does the caller's arithmetic on it (perturb, update, round)
with torch ops on one intra-op thread: no OpenMP team is woken per piece, whose spinning threads would
otherwise take the cores the drawing threads need. :meth:`DirectionSampler.spans` hands z out span by span (``SPAN_NUMEL`` elements,
not part of the contract) to sequential consumers, in reusable per-thread buffers.
``distribution="rademacher"`` draws ±1 instead of N(0, 1) (E[zzᵀ] = I still holds; about 14x faster
on CPU); it is a switch, never the default.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple
from concurrent.futures import ThreadPoolExecutor

import torch

from curvzo.optim.streams import mix64

SPAN_NUMEL = 1 << 22  # elements handed out at a time (16 MiB of float32): a memory/speed knob, not the contract
PIECE_SUB_CHUNKS = 4  # sub-chunks per piece of work at most (256K elements on CPU: a core's work, little overhead)
MIN_PIECES = 4  # pieces per block at least, where it has that many sub-chunks (so small blocks spread too)
DISTRIBUTIONS = ("gaussian", "rademacher")
MAX_WORKERS = 4  # drawing stops scaling past a few threads (memory bandwidth; `make bench`)


def sub_chunk_numel(device: torch.device) -> int:
    """Elements per independently seeded piece of z on ``device`` (part of the RNG contract)."""
    return 1 << 16 if device.type == "cpu" else 1 << 22  # CPU: many, for parallel draws; GPUs: few launches


def default_workers() -> int:
    """One drawing thread per intra-op thread, capped."""
    return max(1, min(torch.get_num_threads(), MAX_WORKERS))


def _single_threaded() -> None:
    """Pool threads run their torch ops on one intra-op thread: a piece is one core's work, and an OpenMP
    team per piece would fight the other drawing threads for the cores (per-thread setting: the caller's
    thread keeps its own)."""
    torch.set_num_threads(1)


@functools.cache
def _executor(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="curvzo-rng", initializer=_single_threaded)


def run_pieces(fn: Callable[[int], None], count: int, workers: int) -> None:
    """``fn(i)`` for i in range(count): in this thread when ``workers`` is 1, else round-robin on a pool
    of ``workers`` single-threaded threads while this one waits.

    ``fn`` must write only its own piece; the result is then independent of ``workers``.
    """
    workers = min(workers, count)
    if workers <= 1:
        for i in range(count):
            fn(i)
        return

    def share(first: int) -> None:
        for i in range(first, count, workers):
            fn(i)

    for future in [_executor(workers).submit(share, w) for w in range(workers)]:
        future.result()


class PieceJob(NamedTuple):
    """``fn(span, z)`` over the pieces of z_block under ``seed`` for ``tensor`` (z written into ``into`` if given)."""

    tensor: torch.Tensor
    seed: int
    block: int
    fn: Callable[[slice, torch.Tensor], Any]
    into: torch.Tensor | None = None


class _PerThread(threading.local):
    def __init__(self) -> None:
        self.generators: dict[torch.device, torch.Generator] = {}
        self.free: dict[torch.device, list[torch.Tensor]] = {}


_LOCAL = _PerThread()


def generator(device: torch.device) -> torch.Generator:
    """This thread's generator on ``device`` (callers reseed it before every use)."""
    gens = _LOCAL.generators
    if device not in gens:
        gens[device] = torch.Generator(device=device)
    return gens[device]


def take_buffer(device: torch.device, numel: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A flat buffer of at least ``numel`` elements from this thread's pool (return it with ``give_buffer``)."""
    free = _LOCAL.free.setdefault(device, [])
    fits = [i for i, buf in enumerate(free) if buf.dtype == dtype and buf.numel() >= numel]
    if fits:
        return free.pop(min(fits, key=lambda i: free[i].numel()))
    free[:] = [buf for buf in free if buf.dtype != dtype]  # too small: replaced by the bigger one, not kept beside it
    with torch.inference_mode(False):  # a normal tensor: buffers are reused inside and outside inference mode
        return torch.empty(max(numel, 1), dtype=dtype, device=device)


def give_buffer(buf: torch.Tensor) -> None:
    free = _LOCAL.free.setdefault(buf.device, [])
    if len(free) < 8:  # a few live spans at most; anything beyond is garbage
        free.append(buf)


@functools.cache
def byte_bits(device: torch.device) -> torch.Tensor:
    """Row b holds the 8 bits of byte b as float32 0/1, low bit first (Rademacher signs, Sparse-MeZO's masks)."""
    return ((torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1).to(device=device, dtype=torch.float32)


@functools.cache
def _sign_table(device: torch.device) -> torch.Tensor:
    """Row b holds the 8 signs (+1 for a 0 bit, -1 for a 1 bit) of byte b, low bit first."""
    return 1.0 - 2.0 * byte_bits(device)


class DirectionSampler:
    """Draws z_b = Z(seed, b) span by span on the block's own device.

    Args:
        distribution: ``gaussian`` (N(0, 1), the papers' choice) or ``rademacher`` (±1).
        workers: CPU threads drawing the sub-chunks of a span at once (the weights are the same for any value).
        sub_chunk: override of the seeded piece size (tests use tiny ones; it changes z).
        span: override of the span size (a multiple of the sub-chunk; it does not change z).
    """

    def __init__(self, distribution: str = "gaussian", workers: int | None = None, *, sub_chunk: int | None = None,
                 span: int | None = None) -> None:
        if distribution not in DISTRIBUTIONS:
            raise ValueError(f"distribution must be one of {', '.join(DISTRIBUTIONS)}, got {distribution!r}")
        self.distribution = distribution
        self.workers = workers or default_workers()
        self._sub_chunk, self._span = sub_chunk, span
        if sub_chunk is not None and span is not None and span % sub_chunk:
            raise ValueError("span must be a multiple of sub_chunk")

    def sub_chunk(self, device: torch.device) -> int:
        return self._sub_chunk or sub_chunk_numel(device)

    def span_numel(self, device: torch.device) -> int:
        sub = self.sub_chunk(device)
        span = self._span or max(SPAN_NUMEL, sub)
        return span - span % sub

    # drawing ---------------------------------------------------------------------------------------
    def _draw(self, piece: torch.Tensor, seed: int) -> None:
        gen = generator(piece.device)
        gen.manual_seed(seed)
        if self.distribution == "gaussian":
            piece.normal_(generator=gen)
            return
        n = piece.numel()
        words = take_buffer(piece.device, (n + 63) // 64, torch.int64)[: (n + 63) // 64]
        index = take_buffer(piece.device, 8 * words.numel(), torch.int32)[: 8 * words.numel()]
        try:
            words.random_(-(2**63), None, generator=gen)  # all 64 bits of each word
            index.copy_(words.view(torch.uint8))  # one byte, eight signs
            if n % 8 == 0:
                torch.index_select(_sign_table(piece.device), 0, index[: n // 8], out=piece.view(-1, 8))
            else:
                piece.copy_(_sign_table(piece.device).index_select(0, index[: -(-n // 8)]).view(-1)[:n])
        finally:
            give_buffer(index)
            give_buffer(words)

    def fill(self, z: torch.Tensor, seed: int, block: int, start: int = 0, *,
             workers: int | None = None) -> torch.Tensor:
        """Write z_b[start : start + len(z)] into the flat float32 ``z`` (``start`` on a sub-chunk boundary),
        on ``workers`` threads (this sampler's by default; 1 inside a piece that already runs on a drawing thread)."""
        sub = self.sub_chunk(z.device)
        first = start // sub
        count = -(-z.numel() // sub)

        def draw(i: int) -> None:
            self._draw(z[i * sub:(i + 1) * sub], mix64(seed, block, first + i))

        run_pieces(draw, count, (workers or self.workers) if z.device.type == "cpu" else 1)
        return z

    def for_each_piece(self, tensor: torch.Tensor, seed: int, block: int, fn: Callable[[slice, torch.Tensor], Any], *,
                       into: torch.Tensor | None = None) -> list[Any]:
        """``fn(span, z)`` for every piece of z_b, on ``workers`` threads; the results in piece order.

        A piece is a run of whole sub-chunks (at most ``PIECE_SUB_CHUNKS``, and at least
        ``MIN_PIECES`` pieces per block when it has that many sub-chunks, so small blocks still
        spread over the threads); the cut depends only on the block's size. ``z`` is the float32
        piece of z_b for the flat slice ``span`` of ``tensor`` (in ``into``, a flat float32 tensor of
        ``tensor.numel()`` elements, when given, else in a per-thread buffer ``fn`` may overwrite).
        ``fn`` must touch only what ``span`` addresses; then nothing depends on the number of threads.
        """
        return self.run_jobs([PieceJob(tensor, seed, block, fn, into)])[0]

    def piece_spans(self, tensor: torch.Tensor) -> list[slice]:
        """The flat spans :meth:`for_each_piece` cuts ``tensor`` into, in piece order (they depend on its size only)."""
        sub, numel = self.sub_chunk(tensor.device), tensor.numel()
        subs = -(-numel // sub)
        count = min(subs, max(-(-subs // PIECE_SUB_CHUNKS), MIN_PIECES))
        return [slice(i * subs // count * sub, min((i + 1) * subs // count * sub, numel)) for i in range(count)]

    def run_jobs(self, jobs: list[PieceJob]) -> list[list[Any]]:
        """:meth:`for_each_piece` for several blocks at once: all their pieces go to the threads in one
        hand-over (one wait, and the pieces of a small block no longer leave a thread idle)."""
        tasks: list[tuple[int, int, slice]] = []  # (job, piece, span)
        results: list[list[Any]] = []
        for j, job in enumerate(jobs):
            spans = self.piece_spans(job.tensor)
            results.append([None] * len(spans))
            tasks += [(j, i, span) for i, span in enumerate(spans)]

        def run(t: int) -> None:
            j, i, span = tasks[t]
            job = jobs[j]
            sub = self.sub_chunk(job.tensor.device)
            first, last = span.start // sub, -(-span.stop // sub)
            n = span.stop - span.start
            buf = None if job.into is not None else take_buffer(job.tensor.device, n)
            try:
                z = job.into[span] if job.into is not None else buf[:n]
                for c in range(first, last):
                    self._draw(z[(c - first) * sub:(c - first + 1) * sub], mix64(job.seed, job.block, c))
                results[j][i] = job.fn(span, z)
            finally:
                if buf is not None:
                    give_buffer(buf)

        on_cpu = all(job.tensor.device.type == "cpu" for job in jobs)
        run_pieces(run, len(tasks), self.workers if on_cpu else 1)
        return results

    def spans(self, tensor: torch.Tensor, seed: int, block: int, *,
              into: torch.Tensor | None = None) -> Iterator[tuple[slice, torch.Tensor]]:
        """Yield (slice of the flattened tensor, float32 z for it): the spans of z_b in order.

        The slice also addresses any state buffer shaped like the tensor. The z view lives in a
        reusable buffer (or in ``into``, a flat float32 tensor of ``tensor.numel()`` elements, e.g. a
        float32 scratch the caller overwrites next) and is only valid until the next iteration; the
        caller may change it in place (mask it, scale it).
        """
        numel = tensor.numel()
        span = self.span_numel(tensor.device)
        buf = None if into is not None else take_buffer(tensor.device, min(numel, span))
        try:
            for start in range(0, numel, span):
                stop = min(start + span, numel)
                z = into[start:stop] if into is not None else buf[: stop - start]
                yield slice(start, stop), self.fill(z, seed, block, start)
        finally:
            if buf is not None:
                give_buffer(buf)

    def direction(self, tensor: torch.Tensor, seed: int, block: int) -> torch.Tensor:
        """The whole z_b as a new float32 tensor shaped like ``tensor`` (tests and analysis)."""
        z = torch.empty(tensor.numel(), dtype=torch.float32, device=tensor.device)
        return self.fill(z, seed, block).view(tensor.shape)

    def squared_norm(self, tensor: torch.Tensor, seed: int, block: int) -> float:
        """||z_b||^2 accumulated in float64 (CurvZO's energy term)."""
        return sum(float(z.double().square().sum()) for _, z in self.spans(tensor, seed, block))

