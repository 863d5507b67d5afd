"""The one registry of random streams: every random number of a run is a pure function of its keys.

A run has one integer seed. Each consumer of randomness owns a stream tag below and derives its
seeds as ``stream_seed(run_seed, tag, *keys)``; per-step consumers derive theirs from the step seed
s_t. Nothing draws from the global torch or numpy RNG, so replay and resume are bit-exact and two
consumers never share numbers. Adding a consumer means adding a tag here, never reusing one.

The RNG contract (how z, the block draws and the rounding bits follow from the seeds) is versioned:
``RNG_CONTRACT_VERSION`` goes into every trajectory record, and replaying a trajectory written
under another version is refused with one line instead of silently giving other weights.
"""

from __future__ import annotations

from enum import IntEnum

#: 1: z_b drawn from one generator per block in 4M-float chunks, in place probes.
#: 2: z_b drawn per 64K-float sub-chunk from its own generator (parallel draws; sub-chunk size per
#:    device type, part of the contract), Rademacher directions as an option, stochastic rounding bits.
#: 3: as 2; trajectory records number their steps from 1, as metrics.jsonl does.
RNG_CONTRACT_VERSION = 3

_MASK64 = (1 << 64) - 1


class Stream(IntEnum):
    """Sub-stream tags. Values are part of the RNG contract: never renumber, only append."""

    STEP = 1             # s_t, the step seed every ZO direction of step t derives from
    DATA_ORDER = 2       # the training minibatch order
    BLOCK_SAMPLER = 3    # CurvZO's Bernoulli / systematic block draws, per step
    EXTRA_BATCHES = 4    # a second, independent data order for optimizers' extra probes (DiZO)
    LOREN_INIT = 5       # LOREN's initial covariance factors a, per block
    DIZO_PROJECTION = 6  # DiZO's scalar ratio probes u, per projection
    ROUNDING = 7         # stochastic rounding bits of an update, per (step, block, sub-chunk)
    QUERY = 8            # the seed of query k within step t (LOREN's K directions)


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


def stream_seed(seed: int, stream: Stream, *keys: int) -> int:
    """The seed of ``stream`` under ``seed`` (a run seed or a step seed) for the given keys."""
    return mix64(seed, int(stream), *keys)


def step_seed(run_seed: int, step: int) -> int:
    """s_t: a pure function of (run seed, step), so any step can be regenerated or resumed."""
    return stream_seed(run_seed, Stream.STEP, step)


def query_seed(step_seed_: int, query: int) -> int:
    """The direction seed of query ``query`` within a step (methods that draw several z per step)."""
    return stream_seed(step_seed_, Stream.QUERY, query)


def check_contract(records, where: str = "trajectory") -> None:
    """Raise ValueError when a record was written under another RNG contract than this code's."""
    for record in records:
        version = record.get("rng", 1)
        if version != RNG_CONTRACT_VERSION:
            raise ValueError(
                f"{where} step {record.get('step')} was written under RNG contract v{version}; this code draws "
                f"directions under v{RNG_CONTRACT_VERSION} and cannot replay it (start afresh, or replay with the "
                f"curvzo version that wrote it)")
