# Run: .venv/bin/pytest tests/appliance/test_ui_browser.py   (needs Debian's chromium: `make browser`)
"""The terminal UI in headless Chromium, driven by Playwright, keyboard only: streaming,
sources expandable to the passage, abstention, stop, API key, and no external requests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from appliance.generation.fake import FakeGenerator
from appliance.server.auth import add_key

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run",
]  # fmt: skip

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed (`make browser` installs it)"
)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.requests = []
    page.on("request", lambda r: page.requests.append(r.url))
    yield page
    context.close()


def wait_js(page, expression: str, timeout: float = 15.0) -> None:
    """Poll a JS expression from Python: the page's CSP (no eval) rules out wait_for_function."""
    import time

    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {expression}")
        time.sleep(0.02)


def wait_ready(page) -> None:
    page.locator("#status").filter(has_text="Ready").wait_for()


def ask(page, text: str) -> None:
    page.keyboard.type(text)
    page.keyboard.press("Enter")


def test_keyboard_only_chat_with_streaming_and_sources(serve, retriever, page):
    gen = FakeGenerator(token_delay_s=0.03)
    server = serve(generator=gen, retriever=retriever)
    page.goto(server.url + "/")
    wait_ready(page)
    assert page.evaluate("document.activeElement.id") == "question"
    assert float(page.evaluate("parseFloat(getComputedStyle(document.body).fontSize)")) >= 20

    ask(page, "Explain alarm E-47.")
    answer = page.locator(".turn.assistant").last
    # Streaming: text appears before the answer is complete.
    wait_js(
        page,
        """(() => { const t = [...document.querySelectorAll('.turn.assistant')].pop();
                    return !!t && t.dataset.state === 'streaming'
                           && t.querySelector('.text').textContent.length > 5; })()""",
    )
    page.wait_for_selector(".turn.assistant[data-state=done]")
    assert "[1]" in answer.locator(".text").inner_text()
    sources = answer.locator("details.source")
    assert sources.count() >= 1
    first = sources.first
    assert first.get_attribute("open") is None
    assert "(cited)" in first.locator("summary").inner_text()
    assert not first.locator(".passage").is_visible()

    page.keyboard.press("Alt+s")
    assert page.evaluate("document.activeElement.tagName") == "SUMMARY"
    page.keyboard.press("Enter")
    assert first.get_attribute("open") is not None
    passage = first.locator(".passage")
    assert passage.is_visible() and len(passage.inner_text()) > 20

    page.keyboard.press("Alt+q")
    assert page.evaluate("document.activeElement.id") == "question"
    ask(page, "Who won the football match yesterday?")
    page.wait_for_selector(".turn.assistant.abstained[data-state=done]")
    assert "do not cover" in page.locator(".turn.assistant").last.inner_text()

    page.keyboard.press("Alt+n")
    assert page.locator(".turn").count() == 0
    assert all(url.startswith(server.url) for url in page.requests), page.requests


def test_escape_stops_the_answer_and_frees_the_slot(serve, page):
    gen = FakeGenerator(reply=" ".join(["word"] * 300), token_delay_s=0.02)
    server = serve(generator=gen)  # no index: plain answers
    page.goto(server.url + "/")
    wait_ready(page)
    ask(page, "Talk for a long time")
    wait_js(
        page,
        "(() => { const t = document.querySelector('.turn.assistant .text');"
        " return !!t && t.textContent.includes('word word'); })()",
    )
    page.keyboard.press("Escape")
    page.wait_for_selector(".turn.assistant[data-state=stopped]")
    assert "[stopped]" in page.locator(".turn.assistant .text").inner_text()
    assert server.wait_idle(timeout=5) and gen.active == 0
    assert page.evaluate("document.activeElement.id") == "question"


def test_api_key_prompt(serve, page, tmp_path):
    key = add_key(tmp_path / "state" / "api_keys.json", "terminal")
    server = serve(generator=FakeGenerator())
    page.goto(server.url + "/")
    page.wait_for_selector("#keyform:not([hidden])")
    assert page.evaluate("document.activeElement.id") == "apikey"
    page.keyboard.type(key)
    page.keyboard.press("Enter")
    wait_ready(page)
    ask(page, "hello")
    page.wait_for_selector(".turn.assistant[data-state=done]")
    assert "You asked: hello" in page.locator(".turn.assistant .text").inner_text()


def test_spanish_terminal_gets_a_spanish_page_and_spanish_answers(serve, retriever, browser):
    """A browser that prefers Spanish gets the Spanish page; a Spanish question is answered
    under the Spanish prompt, and the appliance's own abstention comes back in Spanish."""
    context = browser.new_context(locale="es-ES")
    page = context.new_page()
    page.set_default_timeout(15_000)
    try:
        # The reply names the equipment tag: an answer that states no value while its best
        # passage sentence does would be quoted over by the grounding check.
        gen = FakeGenerator(reply="La alarma indica que el vacío del tambor de LB-2 es bajo [1].")
        # Every question reaches the model here (MiniLM scores Spanish questions low).
        answering = serve(generator=gen, retriever=retriever, abstain_threshold=-1.0)
        page.goto(answering.url + "/")
        page.locator("#status").filter(has_text="Listo").wait_for()
        assert page.evaluate("document.documentElement.lang") == "es"
        assert page.locator("label[for=question]").inner_text() == "Su pregunta"
        assert "Preguntar" in page.locator("#send").inner_text()
        ask(page, "¿Qué significa la alarma E-47?")
        page.wait_for_selector(".turn.assistant[data-state=done]")
        turn = page.locator(".turn.assistant").last
        assert turn.locator(".who").text_content() == "Experto"
        assert "La alarma indica que el vacío" in turn.locator(".text").inner_text()
        assert turn.locator(".sources h2").text_content() == "Fuentes"
        assert "Responde en español" in gen.prompts[-1]
        assert "Pregunta: ¿Qué significa la alarma E-47?" in gen.prompts[-1]

        strict = serve(generator=FakeGenerator(), retriever=retriever)
        page.goto(strict.url + "/")
        page.locator("#status").filter(has_text="Listo").wait_for()
        ask(page, "¿Quién ganó el partido de fútbol ayer?")
        page.wait_for_selector(".turn.assistant.abstained[data-state=done]")
        assert "Los documentos no tratan esta pregunta." in page.locator(".turn.assistant").last.inner_text()  # fmt: skip
    finally:
        context.close()


def test_evidence_sentence_is_highlighted_and_an_unsupported_value_is_replaced(
    serve, retriever, page
):
    server = serve(generator=FakeGenerator(token_delay_s=0.01), retriever=retriever)
    page.goto(server.url + "/")
    wait_ready(page)
    # Asked for its meaning, the entry's "Meaning:" field is the answer (appliance.fields).
    ask(page, "What does alarm E-47 mean?")
    page.wait_for_selector(".turn.assistant[data-state=done]")
    turn = page.locator(".turn.assistant").last
    assert turn.get_attribute("data-grounding") == "supported"
    mark = turn.locator(".evidence mark").first
    assert mark.is_visible()
    sentence = mark.inner_text()
    assert len(sentence) >= 4 and sentence in turn.locator(".text").inner_text()
    # The same sentence is marked inside its passage.
    assert sentence in turn.locator("details.source .passage mark").all_text_contents()

    # A model that states a value the passages do not hold: the value never stays on screen.
    gen = FakeGenerator(reply="Alarm E-47 trips at 999 mbar [1].", token_delay_s=0.01)
    server = serve(generator=gen, retriever=retriever)
    page.goto(server.url + "/")
    wait_ready(page)
    ask(page, "Explain alarm E-47.")
    page.wait_for_selector(".turn.assistant[data-state=done]")
    turn = page.locator(".turn.assistant").last
    text = turn.locator(".text").inner_text()
    assert turn.get_attribute("data-grounding") in ("quoted", "abstained")
    assert "999" not in text
    if turn.get_attribute("data-grounding") == "quoted":
        assert text.startswith("The manual says:")
        assert turn.locator(".evidence mark").first.inner_text() in text
