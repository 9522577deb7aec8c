# Run: .venv/bin/pytest tests/test_readme_commands.py
"""The README's command lines against the code, so a renamed command or option cannot leave
the README behind:

- every `expert ...` the README shows, in a code block or inline, names subcommands and options
  that exist in the argparse tree (alternatives such as `add|revoke` or `--add-key/--list-keys`
  each), and a value it gives an option with fixed choices is one of them;
- every complete example in a code block (no `...`) parses as the `expert` command parses it:
  required arguments present, no argument left over;
- every `make` target the README names is a Makefile target, every variable it sets
  (`make demo LANG=es`) is read by the Makefile, and every target the Makefile documents (`##`)
  is in the README's table of make targets.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from appliance import cli, commands

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
MAKEFILE = (REPO / "Makefile").read_text(encoding="utf-8")

# A word standing for a value (NAME, DIR, FILE:WEIGHT, <command>, KEY), not a literal one.
PLACEHOLDER = re.compile(r"^(<.*>|[A-Z][A-Z0-9_]*([:=.][A-Z0-9_.]+)*|\.\.\.|…)$")


def _expert_in_code(lines: list[str], i: int) -> tuple[str, int] | None:
    """The `expert` command that starts on code line i, continuation lines joined (a trailing
    backslash, or indented lines under it); returns (command, index of its last line)."""
    m = re.search(r"(?:^|[\s/])(expert [a-z<-].*)$", lines[i])
    if not m or lines[i].lstrip().startswith("#"):
        return None
    command = m.group(1)
    while i + 1 < len(lines):
        body = re.sub(r"\s+#.*$", "", command).rstrip()
        nxt = lines[i + 1]
        if nxt.startswith(" ") and nxt.strip().startswith("#"):
            i += 1  # a comment set under the command
        elif body.endswith("\\") or (
            nxt.startswith(" ") and nxt.strip() and not nxt.strip().startswith("expert ")
        ):
            command = body.rstrip("\\") + " " + nxt.strip()
            i += 1
        else:
            break
    return command, i


def readme_commands() -> list[tuple[int, str, bool]]:
    """(line, command, from a code block) for every `expert ...` the README shows; a code line
    that holds several (`expert a ...     expert b ...`) gives each."""
    found: list[tuple[int, str, bool]] = []
    lines = README.splitlines()
    paragraph: list[tuple[int, str]] = []

    def inline() -> None:
        if paragraph:
            joined = " ".join(text.strip() for _, text in paragraph)
            for m in re.finditer(r"`(expert [^`]*)`", joined):
                found.append((paragraph[0][0], m.group(1), False))
            paragraph.clear()

    in_code, i = False, 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            inline()
            in_code = not in_code
        elif in_code:
            got = _expert_in_code(lines, i)
            if got:
                command, last = got
                command = re.sub(r"\s+#.*$", "", command)
                for part in re.split(r"\s{3,}(?=expert )", command):
                    found.append((i + 1, part.strip(), True))
                i = last
        elif line.strip():
            paragraph.append((i + 1, line))
        else:
            inline()
        i += 1
    inline()
    return found


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {flag: action for action in parser._actions for flag in action.option_strings}


def _words(command: str) -> list[str]:
    return command.replace("[", " ").replace("]", " ").split()[1:]  # without "expert"


def problems_of(command: str, root: argparse.ArgumentParser) -> list[str]:
    """What in `command` the argparse tree does not have."""
    problems: list[str] = []
    parsers = [("expert", root)]
    words = _words(command)
    j = 0
    while j < len(words):
        word = words[j]
        subs = {k: v for _, p in parsers for k, v in _subcommands(p).items()}
        if subs and not word.startswith("-"):
            if PLACEHOLDER.match(word):
                break
            alternatives = re.split(r"[|/]", word)
            missing = [a for a in alternatives if a not in subs]
            if missing:
                problems.append(f"no command {' '.join(missing)} (there are: {', '.join(subs)})")
                break
            parsers = [(a, subs[a]) for a in alternatives]
        elif subs and word not in ("-h", "--help", "-v", "--verbose"):
            defaults = [getattr(p, "default_subcommand", None) for _, p in parsers]
            if not all(defaults):
                problems.append(f"{word}: a subcommand of {parsers[0][0]} must come first")
                break
            parsers = [(d, _subcommands(p)[d]) for d, (_, p) in zip(defaults, parsers, strict=True)]
            continue  # the same word again, now under the default subcommand
        elif word.startswith("--"):
            value = words[j + 1] if j + 1 < len(words) else None
            for flag in re.split(r"/(?=--)", word):
                flag = flag.split("=", 1)[0]
                for name, parser in parsers:
                    action = _options(parser).get(flag)
                    if action is None:
                        problems.append(f"`{name}` has no option {flag}")
                    elif action.choices and value and not PLACEHOLDER.match(value):
                        allowed = {str(c) for c in action.choices}
                        wrong = [v for v in value.split("|") if v not in allowed]
                        if wrong:
                            problems.append(f"{flag} {'|'.join(wrong)}: not one of {allowed}")
        j += 1
    return problems


def _variants(command: str) -> list[list[str]]:
    """The argument lists a command with `a|b` alternatives stands for (one per position)."""
    words = shlex.split(command.replace("[", " ").replace("]", " "))[1:]
    groups = [w.split("|") if "|" in w and not w.startswith("-") else [w] for w in words]
    longest = max(len(g) for g in groups)
    return [[g[min(k, len(g) - 1)] for g in groups] for k in range(longest)]


def parse_error(argv: list[str]) -> str | None:
    """What `expert` says about argv before running anything (None: it parses)."""
    parser = cli.build_parser()
    argv = cli._insert_default_subcommand(parser, argv)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            args, extra = parser.parse_known_args(argv)
    except SystemExit:
        message = err.getvalue().strip().splitlines()[-1]
        placeholder = re.search(r"invalid \w+ value: '([^']*)'", message)
        return None if placeholder and PLACEHOLDER.match(placeholder.group(1)) else message
    if extra and not getattr(args, "accepts_extra_args", False):
        return f"left over: {' '.join(extra)}"
    return None


@pytest.fixture(scope="module")
def root() -> argparse.ArgumentParser:
    if commands.missing_build_modules():
        pytest.skip("the build extra is not installed: the build commands are stand-ins here")
    return cli.build_parser()


def test_the_readme_shows_expert_commands() -> None:
    found = readme_commands()
    assert len(found) > 40 and sum(code for _, _, code in found) > 20
    shown = {c.split()[1] for _, c, _ in found}
    assert {"serve", "ingest", "keys", "device", "train", "export", "bundle", "eval"} <= shown


def test_every_expert_command_and_option_the_readme_shows_exists(root) -> None:
    problems = [
        f"README.md:{line}: {command!r}: {p}"
        for line, command, _ in readme_commands()
        for p in problems_of(command, root)
    ]
    assert not problems, "\n".join(problems)


def test_every_complete_readme_example_parses(root) -> None:
    complete = [
        (line, command)
        for line, command, code in readme_commands()
        if code and not re.search(r"\.\.\.|…|<", command)
    ]
    assert len(complete) > 15
    problems = []
    for line, command in complete:
        for argv in _variants(command):
            error = parse_error(argv)
            if error:
                problems.append(f"README.md:{line}: expert {' '.join(argv)}: {error}")
    assert not problems, "\n".join(problems)


def test_the_checks_catch_what_they_are_for(root) -> None:
    assert problems_of("expert eval modes --no-such-option", root)
    assert problems_of("expert eval --bundle B --no-such-option", root)  # default: modes
    assert problems_of("expert device install|uninstall B", root)
    assert problems_of("expert serve --add-key/--drop-key NAME", root)
    assert problems_of("expert export --device tpu", root)
    assert not problems_of("expert export --device cpu|cuda --int4-algo k_quant_mixed", root)
    assert parse_error(["keys", "list", "NAME"]) == "left over: NAME"
    assert "required: --out" in parse_error(["export", "--model", "m"])
    assert parse_error(["eval", "modes", "--limit", "N"]) is None  # a placeholder value


def _make_targets() -> dict[str, str]:
    """Makefile target -> its `##` help ('' when it has none)."""
    targets = {}
    for m in re.finditer(r"^([a-z][a-z0-9-]*):(?!=)([^#\n]*)(?:## (.*))?$", MAKEFILE, re.M):
        targets.setdefault(m.group(1), m.group(3) or "")
        if m.group(3):
            targets[m.group(1)] = m.group(3)
    return targets


def _readme_make_table() -> list[str]:
    section = README.split("## Make targets", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([a-z][a-z0-9-]*)` \|", section, re.M)


def test_every_make_target_the_readme_names_exists() -> None:
    targets = _make_targets()
    named = set(_readme_make_table())
    uses = re.findall(r"make ([a-z][a-z0-9-]*)((?: [A-Z_]+=\S*)*)", README)
    assert len(named) >= 10 and len(uses) >= 20
    missing = sorted((named | {t for t, _ in uses}) - set(targets))
    assert not missing, f"README names make targets the Makefile lacks: {missing}"
    variables = {v for _, sets in uses for v in re.findall(r"([A-Z_]+)=", sets)}
    unread = sorted(v for v in variables if not re.search(rf"\$\({v}\)", MAKEFILE))
    assert not unread, f"README sets make variables the Makefile never reads: {unread}"


def test_every_documented_make_target_is_in_the_readme_table() -> None:
    documented = {t for t, help_text in _make_targets().items() if help_text}
    missing = sorted(documented - set(_readme_make_table()))
    assert not missing, f"Makefile targets with a `##` help, not in README's table: {missing}"


def test_readme_examples_are_found_across_lines() -> None:
    """A code-block example continued on indented lines is read as one command."""
    found = {c for _, c, code in readme_commands() if code}
    assert any(c.startswith("expert bundle --name plant") and "--domain" in c for c in found)
    assert any(c.startswith("expert train") and "--with-retrieval" in c for c in found)
    assert not any("#" in c for c in found)  # comments set beside or under it are dropped
