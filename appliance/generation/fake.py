"""A small deterministic Generator for tests: no model, instant, and observable.

The service's tests (limits, streaming, disconnects, reload, citations) need a generator
that answers in milliseconds, always the same way, and that reports how many generations
are running and whether a cancelled one was closed. This one answers from the first
passage of a grounded prompt (citing it as [1]) or echoes the question otherwise.

Test: .venv/bin/pytest tests/appliance/test_generation_fake.py
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Iterator, Sequence

from appliance.generation.base import GenerationParams, GenerationStream, scan_tokens

_TOKEN = re.compile(r"\w+|[^\w\s]|\s+")
_PASSAGE = re.compile(r'<passage id="(\d+)"[^\n]*>\n(.*?)\n</passage>', re.S)
_QUESTION = re.compile(r"Question: (.*?)(?:\n<\|end\|>|\Z)", re.S)


class FakeGenerator:
    """Deterministic fake: `reply` fixes the answer; otherwise it is derived from the prompt.

    - `token_delay_s` sleeps between deltas (to hold a slot in load tests);
    - `active` counts generations in progress and `closed` counts generations that ended
      (completed or cancelled), so tests can prove a disconnect freed its generation;
    - temperature > 0 shuffles words with `seed`, so seeded sampling is reproducible.
    """

    def __init__(
        self,
        *,
        model_id: str = "fake-model",
        context_length: int = 2048,
        reply: str | None = None,
        token_delay_s: float = 0.0,
        first_token_delay_s: float = 0.0,
        adapters: Sequence[str] = (),
    ) -> None:
        if context_length < 16:
            raise ValueError(f"context_length must be >= 16, got {context_length}")
        if token_delay_s < 0 or first_token_delay_s < 0:
            raise ValueError("token_delay_s and first_token_delay_s must be >= 0")
        self.model_id = model_id
        self.context_length = context_length
        self.reply = reply
        self.token_delay_s = token_delay_s
        self.first_token_delay_s = first_token_delay_s
        self._adapters = tuple(adapters)
        self._lock = threading.Lock()
        self.active = 0
        self.started = 0
        self.closed = 0
        self.prompts: list[str] = []

    @property
    def adapters(self) -> Sequence[str]:
        return self._adapters

    def chat_prompt(self, messages: Sequence[dict]) -> str:
        parts = [f"<|{m['role']}|>\n{m['content']}\n<|end|>" for m in messages]
        return "\n".join(parts) + "\n<|assistant|>\n"

    def count_tokens(self, text: str) -> int:
        return len(_TOKEN.findall(text))

    def answer_for(self, prompt: str, params: GenerationParams) -> str:
        """The full text `generate` would stream (before stop strings and token limits)."""
        if self.reply is not None:
            text = self.reply
        else:
            passages = _PASSAGE.findall(prompt)
            if passages:
                first = passages[0][1].strip().split("\n")[0]
                sentence = re.split(r"(?<=[.!?])\s", first, maxsplit=1)[0].rstrip(".")
                text = f"According to the documents, {sentence} [1]."
            else:
                asked = _QUESTION.search(prompt)
                question = asked.group(1).strip() if asked else prompt.rsplit("<|user|>", 1)[-1]
                question = question.replace("<|end|>", "").replace("<|assistant|>", "").strip()
                text = f"You asked: {question}"
        if params.adapter:
            text = f"[{params.adapter}] {text}"
        if params.temperature > 0:
            words = text.split(" ")
            random.Random(params.seed).shuffle(words)
            text = " ".join(words)
        return text

    def generate(self, prompt: str, params: GenerationParams) -> GenerationStream:
        if params.adapter and params.adapter not in self._adapters:
            raise ValueError(f"unknown adapter {params.adapter!r}")
        prompt_tokens = self.count_tokens(prompt)
        if prompt_tokens + params.max_new_tokens > self.context_length:
            raise ValueError(
                f"prompt ({prompt_tokens} tokens) + max_new_tokens ({params.max_new_tokens}) "
                f"exceeds the model context ({self.context_length} tokens)"
            )
        pieces = _TOKEN.findall(self.answer_for(prompt, params))
        stream = GenerationStream(prompt_tokens=prompt_tokens)
        stream._inner = self._run(prompt, pieces, params, stream)
        return stream

    def _run(
        self, prompt: str, pieces: list[str], params: GenerationParams, stream: GenerationStream
    ) -> Iterator[str]:
        with self._lock:
            self.active += 1
            self.started += 1
            self.prompts.append(prompt)
        try:
            if self.first_token_delay_s:
                time.sleep(self.first_token_delay_s)
            yield from scan_tokens(self._paced(pieces), params, stream)
        finally:
            with self._lock:
                self.active -= 1
                self.closed += 1

    def _paced(self, pieces: list[str]) -> Iterator[str]:
        """The answer's tokens, `token_delay_s` apart."""
        for i, piece in enumerate(pieces):
            if i and self.token_delay_s:
                time.sleep(self.token_delay_s)
            yield piece
