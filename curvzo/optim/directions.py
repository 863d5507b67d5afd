"""Seeded Gaussian directions: z_b is a pure function of (step seed, block index).

Every zeroth-order method draws its perturbations here (optimizers.md §1.2). A dedicated
``torch.Generator`` per device is reseeded for each block, so z_b never depends on the global RNG,
on the order in which blocks are visited, or on which other blocks a sparse method selects.
Directions are drawn in float32 in fixed-size chunks of the flattened tensor into one reusable
buffer per device, which caps the transient memory at one chunk. The chunk size is part of the
RNG contract: changing it changes z for the same seed. Generators and buffers are per thread, so
worker threads may draw the directions of different blocks at once (:meth:`ZerothOrderOptimizer.for_each_block`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import torch

CHUNK_NUMEL = 1 << 22  # 4M floats = 16 MiB per device; part of the RNG contract
_MASK64 = (1 << 64) - 1


def mix64(*values: int) -> int:
    """Hash integers into a 63-bit seed (SplitMix64 finaliser applied in sequence)."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (v & _MASK64)) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h >> 1  # torch.Generator.manual_seed takes values below 2**63 without wrapping


class DirectionSampler:
    """Regenerates z_b = Z(seed, b) chunk by chunk on the block's own device."""

    def __init__(self, chunk_numel: int = CHUNK_NUMEL) -> None:
        self.chunk_numel = chunk_numel
        self._local = threading.local()  # per thread: {device: generator}, {device: buffer}

    def _per_thread(self) -> tuple[dict[torch.device, torch.Generator], dict[torch.device, torch.Tensor]]:
        if not hasattr(self._local, "generators"):
            self._local.generators, self._local.buffers = {}, {}
        return self._local.generators, self._local.buffers

    def _generator(self, device: torch.device) -> torch.Generator:
        generators, _ = self._per_thread()
        if device not in generators:
            generators[device] = torch.Generator(device=device)
        return generators[device]

    def _buffer(self, device: torch.device, numel: int) -> torch.Tensor:
        _, buffers = self._per_thread()
        buf = buffers.get(device)
        if buf is None or buf.numel() < numel:
            buf = torch.empty(min(max(numel, 1), self.chunk_numel), dtype=torch.float32, device=device)
            buffers[device] = buf
        return buf

    def spans(self, tensor: torch.Tensor, seed: int, block: int) -> Iterator[tuple[slice, torch.Tensor]]:
        """Yield (slice of the flattened tensor, float32 z for it): the chunks of z_b in order.

        The slice also addresses any state buffer shaped like the tensor (momentum, Adam moments,
        a Hessian diagonal). The z view is only valid until the next iteration: it lives in a
        shared buffer, which the caller may overwrite in place (e.g. to scale it).
        """
        numel = tensor.numel()
        gen = self._generator(tensor.device)
        gen.manual_seed(mix64(seed, block))
        buf = self._buffer(tensor.device, min(numel, self.chunk_numel))
        for start in range(0, numel, self.chunk_numel):
            stop = min(start + self.chunk_numel, numel)
            z = buf[: stop - start]
            z.normal_(generator=gen)
            yield slice(start, stop), z

    def chunks(self, tensor: torch.Tensor, seed: int, block: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (view of ``tensor``, float32 z for that view) over the flattened tensor."""
        flat = tensor.data.view(-1)
        for span, z in self.spans(tensor, seed, block):
            yield flat[span], z

    def direction(self, tensor: torch.Tensor, seed: int, block: int) -> torch.Tensor:
        """The whole z_b as a new float32 tensor shaped like ``tensor`` (tests and analysis)."""
        parts = [z.clone() for _, z in self.chunks(tensor, seed, block)]
        return torch.cat(parts).view(tensor.shape)

    def add_(self, tensor: torch.Tensor, seed: int, block: int, alpha: float) -> None:
        """tensor += alpha * z_b, in place, computed in float32 and rounded once to the tensor dtype."""
        for view, z in self.chunks(tensor, seed, block):
            view.add_(z, alpha=alpha)

    def add_with_squared_norm_(self, tensor: torch.Tensor, seed: int, block: int, alpha: float) -> float:
        """``add_`` that also returns ||z_b||^2 from the same draws (no extra RNG pass)."""
        total = 0.0
        for view, z in self.chunks(tensor, seed, block):
            view.add_(z, alpha=alpha)
            total += float(torch.dot(z, z))
        return total

    def squared_norm(self, tensor: torch.Tensor, seed: int, block: int) -> float:
        """||z_b||^2 in float32 accumulated in float64 (CurvZO's energy term)."""
        return sum(float(z.double().square().sum()) for _, z in self.chunks(tensor, seed, block))
