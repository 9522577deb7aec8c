"""The interface the service talks to. Implementations: genai.GenaiGenerator, fake.FakeGenerator."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class GenerationParams:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)
    adapter: str | None = None  # runtime LoRA adapter name, if the bundle has adapters

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not (self.temperature >= 0.0):  # also rejects NaN
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@runtime_checkable
class Generator(Protocol):
    """A chat model that streams text.

    `generate` yields text deltas; the caller stops iterating (closing the generator) to cancel,
    which must free the model's resources for that request.
    """

    model_id: str
    context_length: int

    def chat_prompt(self, messages: Sequence[dict]) -> str:
        """Render messages with the model's chat template, ready for generation."""
        ...

    def count_tokens(self, text: str) -> int: ...

    def generate(self, prompt: str, params: GenerationParams) -> Iterator[str]: ...

    @property
    def adapters(self) -> Sequence[str]: ...
