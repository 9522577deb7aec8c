# Run: .venv/bin/pytest tests/build/test_bundle_prompting.py
"""`expert bundle --domain/--language/--abstain-message`: the bundle's own prompt wording,
recorded in the manifest and read back by the service's answer policy."""

from __future__ import annotations

import argparse

import pytest

from appliance.answering import AnswerPolicy
from appliance.errors import UserFacingError
from appliance.prompting import NOT_IN_DOCUMENTS
from build.commands.bundle import _prompting, add_arguments


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_domain_goes_into_the_manifest_and_the_policy_uses_it():
    section = _prompting(parse("--domain", "the Apache HTTP Server manual"))
    assert section == {
        "domain": "the Apache HTTP Server manual", "language": "en", "abstain_message": None
    }  # fmt: skip
    policy = AnswerPolicy.from_manifest({"prompting": section})
    assert "the Apache HTTP Server manual" in policy.wording.system
    assert "plant" not in policy.wording.system + policy.abstain_text
    assert "plant" not in policy.wording.passages_intro


def test_no_flags_keep_the_plant_wording_and_a_message_overrides_the_sentence():
    assert _prompting(parse()) == {}
    assert AnswerPolicy.from_manifest({}).abstain_text == NOT_IN_DOCUMENTS
    section = _prompting(parse("--abstain-message", "Not in the pump manuals."))
    policy = AnswerPolicy.from_manifest({"prompting": section})
    assert policy.abstain_text == "Not in the pump manuals."
    assert "Not in the pump manuals." in policy.wording.system


@pytest.mark.parametrize(
    "argv,message",
    [
        (("--domain", "x", "--language", "tlh"), "no prompt templates"),
        (("--domain", "x" * 200), "short phrase"),
        (("--abstain-message", "  "), "must not be empty"),
    ],
)
def test_bad_wording_flags_are_refused(argv, message):
    with pytest.raises(UserFacingError, match=message):
        _prompting(parse(*argv))
