"""Writing an update into the weights: round to nearest, or stochastically for half precision.

A ZO update η·g·z (η = 1e-7 … 1e-6) is mostly below half an ulp of a bfloat16 weight (|θ| ≈ 0.02
→ ulp ≈ 1.2e-4), so round-to-nearest throws it away (optimizers.md §1.4). Stochastic rounding
rounds the float32 result up or down with the probabilities that make E[θ_new] equal it exactly.
Its random bits come from the ``ROUNDING`` stream keyed by (step seed, block, sub-chunk), so a
replay or resume rounds every element the same way again.
"""

from __future__ import annotations

import torch

from curvzo.optim.directions import generator, give_buffer, run_pieces, sub_chunk_numel, take_buffer
from curvzo.optim.streams import Stream, stream_seed

ROUNDINGS = ("auto", "stochastic", "nearest")
HALF = (torch.bfloat16, torch.float16)


def resolve_rounding(mode: str, dtype: torch.dtype) -> str:
    """``stochastic`` or ``nearest`` for weights of ``dtype``: float32 (and wider) weights always round
    to nearest (their ulp is 2⁻²³·|θ|, and the float32 result is already what they store)."""
    if dtype not in HALF:
        return "nearest"
    return "stochastic" if mode in ("auto", "stochastic") else "nearest"


def store(dst: torch.Tensor, value: torch.Tensor, rounding: str, seed: int, block: int, start: int,
          workers: int = 1) -> None:
    """dst ← round(value): ``value`` is the float32 result for the flat slice ``dst`` of block ``block``
    starting at element ``start``; ``value`` may be overwritten. ``seed`` is the step seed."""
    if dst.dtype == torch.float32 or rounding == "nearest" or dst.dtype not in HALF:
        if value.data_ptr() != dst.data_ptr():
            dst.copy_(value)
        return
    if dst.dtype == torch.bfloat16:
        _stochastic_bfloat16(dst, value, seed, block, start, workers)
    else:
        _stochastic_float16(dst, value, seed, block, start, workers)


def _random_fields(n: int, device: torch.device, seed: int, block: int, start: int, workers: int,
                   dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(buffer, fields): uniformly random ``dtype`` fields for elements [start, start + n) of the block.

    Sub-chunk c of the block draws its fields from its own generator keyed (seed, ROUNDING, block, c),
    so element j always gets the same bits, however the block is cut into spans. Return ``buffer``
    with ``give_buffer`` once the fields are used.
    """
    sub = sub_chunk_numel(device)
    per_word = 8 // torch.empty(0, dtype=dtype).element_size()
    first, last = start // sub, (start + n - 1) // sub
    words_per_sub = sub // per_word
    words = take_buffer(device, (last - first + 1) * words_per_sub, torch.int64)

    def draw(i: int) -> None:
        gen = generator(device)
        gen.manual_seed(stream_seed(seed, Stream.ROUNDING, block, first + i))
        words[i * words_per_sub:(i + 1) * words_per_sub].random_(-(2**63), None, generator=gen)  # all 64 bits

    run_pieces(draw, last - first + 1, workers if device.type == "cpu" else 1)
    offset = start - first * sub
    return words, words.view(dtype)[offset:offset + n]


def _stochastic_bfloat16(dst: torch.Tensor, value: torch.Tensor, seed: int, block: int, start: int,
                         workers: int) -> None:
    """bfloat16 is the top half of float32: add 16 uniform random bits below it and truncate.

    The carry reaches the kept half with probability (dropped bits)/2¹⁶, exactly the fraction of
    an ulp by which ``value`` lies above the truncated value (in magnitude), so E[dst] = value.
    """
    n = value.numel()
    words, fields = _random_fields(n, value.device, seed, block, start, workers, torch.int16)
    try:
        offsets = take_buffer(value.device, n, torch.int32)[:n]
        offsets.copy_(fields).bitwise_and_(0xFFFF)
        bits = value.view(torch.int32)
        bits.add_(offsets).bitwise_and_(-65536)  # -65536 = 0xFFFF0000: the bfloat16 half survives
        give_buffer(offsets)
    finally:
        give_buffer(words)
    dst.copy_(value)  # exact: the dropped half is zero


def _stochastic_float16(dst: torch.Tensor, value: torch.Tensor, seed: int, block: int, start: int,
                        workers: int) -> None:
    """float16 has its own exponent range (subnormals below 6.1e-5), so round between the two float16
    neighbours of ``value`` explicitly: the far one with probability (distance to the near one)/ulp."""
    n = value.numel()
    words, fields = _random_fields(n, value.device, seed, block, start, workers, torch.int32)
    try:
        uniform = (fields & 0xFFFFFF).float().mul_(2.0**-24)
    finally:
        give_buffer(words)
    near = value.to(torch.float16)
    near32 = near.float()
    gap = value - near32  # exact: value and its nearest float16 lie within a factor 2 of each other
    # the other neighbour: one float16 step from `near` towards `value` (bit patterns are sign-magnitude)
    away = (near32 == 0) | (torch.sign(gap) == torch.sign(near32))
    step = torch.where(away, 1, -1).to(torch.int16)
    other = (near.view(torch.int16) + step).view(torch.float16)
    other = torch.where(near32 == 0, torch.copysign(torch.tensor(2.0**-24, device=value.device), gap).half(), other)
    spacing = (other.float() - near32).abs()
    take_other = (gap != 0) & (uniform * spacing < gap.abs())
    dst.copy_(torch.where(take_other, other, near))
