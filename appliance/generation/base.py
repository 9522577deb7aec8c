"""The interface the service talks to, and the streaming logic every implementation shares.

Implementations: genai.GenaiGenerator (the device's), fake.FakeGenerator (tests). Both turn
their tokens into text deltas through `scan_tokens`, so stop strings, max_new_tokens and
`finish_reason` behave the same in both, and a test of the fake tests the real behaviour.

Test: .venv/bin/pytest tests/appliance/test_generation_fake.py
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
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


class StopScanner:
    """Cuts streamed text at the first stop string without ever emitting part of one.

    Text that could be the start of a stop string is held back until the next delta shows
    whether it is; `finish()` releases what is held when generation ends normally.
    """

    def __init__(self, stop: Sequence[str]) -> None:
        self.stop = tuple(s for s in stop if s)
        self.text = ""
        self.sent = 0
        self.stopped = False

    def feed(self, delta: str) -> str:
        if self.stopped:
            return ""
        self.text += delta
        if not self.stop:
            out, self.sent = self.text[self.sent :], len(self.text)
            return out
        start = max(0, self.sent - max(len(s) for s in self.stop))
        hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        if hits:
            cut = min(hits)
            out = self.text[self.sent : cut]
            self.sent = cut
            self.stopped = True
            return out
        hold = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self.text)), hold, -1):
                if self.text.endswith(s[:n]):
                    hold = n
                    break
        end = max(self.sent, len(self.text) - hold)
        out, self.sent = self.text[self.sent : end], end
        return out

    def finish(self) -> str:
        if self.stopped:
            return ""
        out, self.sent = self.text[self.sent :], len(self.text)
        return out


class GenerationStream:
    """An iterator of text deltas that also reports how generation ended.

    After iteration: `finish_reason` is "stop" (end-of-sequence token or a stop string) or
    "length" (max_new_tokens or the context was reached); `completion_tokens` counts the
    tokens generated. `close()` cancels and frees the generation.
    """

    def __init__(self, prompt_tokens: int = 0) -> None:
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0
        self.reused_tokens = 0  # prompt tokens whose KV came from the prefix cache
        self.finish_reason: str | None = None
        self._inner: Iterator[str] = iter(())

    def __iter__(self) -> GenerationStream:
        return self

    def __next__(self) -> str:
        return next(self._inner)

    def close(self) -> None:
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()


def scan_tokens(
    tokens: Iterable[str], params: GenerationParams, stream: GenerationStream
) -> Iterator[str]:
    """The text deltas of a generation, given the decoded text of each new token.

    Counts `stream.completion_tokens`, draws at most `params.max_new_tokens` tokens (never one
    more), cuts the text at the first of `params.stop` and sets `stream.finish_reason`: "stop"
    for a stop string or for `tokens` ending first (end-of-sequence), "length" when
    max_new_tokens tokens were generated.
    """
    scanner = StopScanner(params.stop)
    for text in tokens:
        stream.completion_tokens += 1
        out = scanner.feed(text)
        if out:
            yield out
        if scanner.stopped:
            stream.finish_reason = "stop"
            return
        if stream.completion_tokens >= params.max_new_tokens:
            break
    tail = scanner.finish()
    if tail:
        yield tail
    stream.finish_reason = "length" if stream.completion_tokens >= params.max_new_tokens else "stop"
