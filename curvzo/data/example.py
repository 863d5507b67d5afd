"""The unit every task renders to: a prompt and its candidate continuations."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Example:
    """One rendered example (protocol.md §4).

    ``prompt`` is what the model is conditioned on and ``options`` the continuations that are
    scored; the scored sequence for option i is ``(prompt + options[i]).strip(" ")``, and the
    prompt alone is ``prompt.strip(" ")``. ``label`` is the index of the gold option.
    """

    prompt: str
    options: tuple[str, ...]
    label: int
