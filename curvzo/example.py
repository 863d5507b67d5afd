"""The unit every task renders to: a prompt and its candidate continuations."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Example:
    """One rendered example (protocol.md §4).

    ``prompt`` is what the model is conditioned on and ``options`` the continuations that are
    scored; the scored sequence for option i is ``(prompt + options[i]).strip(" ")``, and the
    prompt alone is ``prompt.strip(" ")``. ``label`` is the index of the gold option: the one a
    classification loss targets and the one a language-model loss trains on.

    ``correct`` lists every option index that counts as a hit when evaluating (ReCoRD: each gold
    entity); empty means just ``label``. ``answers`` holds the gold strings of a generation task
    (SQuAD, DROP), scored by F1/EM as the maximum over them; its ``options`` is then the single
    training target.
    """

    prompt: str
    options: tuple[str, ...]
    label: int
    correct: tuple[int, ...] = ()
    answers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.label < len(self.options):
            raise ValueError(f"label {self.label} is not an index into {len(self.options)} options")
        if any(not 0 <= i < len(self.options) for i in self.correct):
            raise ValueError(f"correct {self.correct} holds an index outside {len(self.options)} options")

    @property
    def correct_options(self) -> tuple[int, ...]:
        """Option indices that count as correct (``label`` alone unless ``correct`` says more)."""
        return self.correct or (self.label,)
