"""LOREN's row-major view of a tensor: flat spans cut into row segments, sums in piece order, column-sum tables.

LOREN (``loren.py``) factorises each tensor as (m, n) rows and draws its directions in flat pieces that do not
align with rows; these helpers map a piece back onto rows and columns.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from curvzo.optim.blocks import Block


def matrix_shape(param: torch.Tensor) -> tuple[int, int]:
    """(m, n) of the row-major view LOREN factorises: n = size(1) for ≥2-D tensors, else m = 1."""
    if param.dim() >= 2:
        n = param.size(1)
        return param.numel() // n, n
    return 1, param.numel()


class Segment(NamedTuple):
    """A row-aligned piece [lo, hi) of a chunk: ``rows`` full rows from ``row``, or (rows = 0) part of one row."""

    lo: int
    hi: int
    row: int
    col: int
    rows: int


def row_segments(start: int, stop: int, n: int) -> list[Segment]:
    """Split the flat span [start, stop) of an (m, n) row-major tensor into a partial head row, a block
    of full rows and a partial tail row (offsets relative to ``start``); chunks do not align with rows."""
    segments, pos = [], start
    row, col = divmod(start, n)
    if col:
        end = min(stop, start + n - col)
        segments.append(Segment(0, end - start, row, col, 0))
        pos, row = end, row + 1
    rows = (stop - pos) // n
    if rows:
        segments.append(Segment(pos - start, pos - start + rows * n, row, 0, rows))
        pos, row = pos + rows * n, row + rows
    if pos < stop:
        segments.append(Segment(pos - start, stop - start, row, 0, 0))
    return segments


def ordered_sum(parts: list[torch.Tensor], size: int, device: torch.device,
                 out: torch.Tensor | None = None) -> torch.Tensor:
    """Σ parts, added in piece order (so the result does not depend on which thread made which part)."""
    total = torch.zeros(size, dtype=torch.float32, device=device) if out is None else out.zero_()
    for part in parts:
        total.add_(part)
    return total


def row_pieces(v: torch.Tensor, segments: list[Segment], n: int):
    """(segment, view): full-row segments come as (rows, n) views, partial rows as 1-D views."""
    for seg in segments:
        piece = v[seg.lo:seg.hi]
        yield seg, (piece.view(seg.rows, n) if seg.rows else piece)


def z_from_u(u: torch.Tensor, segments: list[Segment], n: int, a: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """u −= coef_row · ā in place on one piece (coef = κp: 0-d when tied, one per row for per_row); returns z."""
    for seg, piece in row_pieces(u, segments, n):
        if coef.dim() == 0:
            c = coef
        else:
            c = coef[seg.row:seg.row + seg.rows, None] if seg.rows else coef[seg.row]
        piece.addcmul_(a if seg.rows else a[seg.col:seg.col + seg.hi - seg.lo], c, value=-1.0)
    return u


class ColumnSums:
    """colsum(U_k) of every (query k, tensor) of one step, in one table per device allocated up front.

    The probe computes these between a forward pass's activations; thousands of small tensors allocated there
    pinned the freed activation memory in the heap (SmolLM2: 0.7 GB more resident memory by the second step).
    """

    def __init__(self, blocks: list[Block], num_queries: int) -> None:
        self._where: dict[int, tuple[torch.device, int, int]] = {}  # block index -> (device, offset, n)
        widths: dict[torch.device, int] = {}
        for block in blocks:
            device, n = block.param.device, matrix_shape(block.param)[1]
            self._where[block.index] = (device, widths.get(device, 0), n)
            widths[device] = widths.get(device, 0) + n
        self._tables = {device: torch.zeros(num_queries, width, dtype=torch.float32, device=device)
                        for device, width in widths.items()}
        self._filled: set[tuple[int, int]] = set()

    def __contains__(self, key: tuple[int, int]) -> bool:
        return key in self._filled

    def __getitem__(self, key: tuple[int, int]) -> torch.Tensor:
        if key not in self._filled:
            raise KeyError(key)
        return self._row(key)

    def slot(self, key: tuple[int, int]) -> torch.Tensor:
        """The row for (query, block index) to write its column sums into (counted as known from now on)."""
        self._filled.add(key)
        return self._row(key)

    def _row(self, key: tuple[int, int]) -> torch.Tensor:
        device, offset, n = self._where[key[1]]
        return self._tables[device][key[0], offset:offset + n]
