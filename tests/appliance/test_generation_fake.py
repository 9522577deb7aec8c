# Run: .venv/bin/pytest tests/appliance/test_generation_fake.py
"""The fake generator and the stop-string scanner both generators share."""

from __future__ import annotations

import pytest

from appliance.generation.base import GenerationParams, Generator, StopScanner
from appliance.generation.fake import FakeGenerator
from appliance.prompting import PromptPassage, build_messages


def test_fake_is_a_generator_and_answers_from_the_first_passage():
    gen = FakeGenerator()
    assert isinstance(gen, Generator)
    messages = build_messages(
        "Torque?", [PromptPassage("The nut takes 120 N·m. Then check.", "Pump")]
    )
    text = "".join(gen.generate(gen.chat_prompt(messages), GenerationParams()))
    assert text == "According to the documents, The nut takes 120 N·m [1]."


def test_fake_is_deterministic_and_seeded():
    gen = FakeGenerator(reply="one two three four five six")
    greedy = GenerationParams()
    assert "".join(gen.generate("p", greedy)) == "one two three four five six"
    a = "".join(gen.generate("p", GenerationParams(temperature=1.0, seed=7)))
    b = "".join(gen.generate("p", GenerationParams(temperature=1.0, seed=7)))
    c = "".join(gen.generate("p", GenerationParams(temperature=1.0, seed=8)))
    assert a == b and a != c and sorted(a.split()) == sorted(c.split())


def test_fake_reports_finish_and_frees_on_close():
    gen = FakeGenerator(reply="a b c d e f")
    stream = gen.generate("p", GenerationParams(max_new_tokens=3))
    assert "".join(stream) == "a b"
    assert stream.finish_reason == "length" and stream.completion_tokens == 3
    stream = gen.generate("p", GenerationParams())
    next(stream)
    assert gen.active == 1
    stream.close()
    assert gen.active == 0 and gen.closed == 2
    with pytest.raises(ValueError, match="exceeds"):
        gen.generate("word " * 5000, GenerationParams())


@pytest.mark.parametrize(
    "deltas,stop,expected",
    [
        (["Hello", " wor", "ld", " STOP", " more"], ["STOP"], "Hello world "),
        (["ab", "c<", "|e", "nd|>x"], ["<|end|>"], "abc"),
        (["ST", "ill going"], ["STOP"], "STill going"),  # a held-back prefix is released
        (["x", "y"], [], "xy"),
        (["a\n\nb"], ["\n\n", "b"], "a"),  # the earliest stop wins
    ],
)
def test_stop_scanner_never_emits_part_of_a_stop_string(deltas, stop, expected):
    scanner = StopScanner(stop)
    out = "".join(scanner.feed(d) for d in deltas) + scanner.finish()
    assert out == expected
