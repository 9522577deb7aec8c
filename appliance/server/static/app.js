// The terminal chat page: streams answers from /v1/chat/completions and shows their sources.
// Keyboard only; every text from the server is inserted with textContent (never as HTML).
"use strict";

(function () {
  const HISTORY_MESSAGES = 8; // earlier turns sent with each question
  const $ = (id) => document.getElementById(id);
  const conversation = $("conversation");
  const form = $("ask");
  const question = $("question");
  const sendButton = $("send");
  const stopButton = $("stop");
  const status = $("status");
  const keyForm = $("keyform");
  const keyInput = $("apikey");
  // The page's message catalogue (appliance/i18n.py), in the language the server chose.
  const messages = JSON.parse($("messages").textContent);
  function t(key, vars) {
    let text = messages[key] || key;
    for (const [k, v] of Object.entries(vars || {})) text = text.replace("{" + k + "}", v);
    return text;
  }

  let apiKey = sessionStorage.getItem("expert-api-key") || "";
  let model = null;
  let history = [];
  let controller = null;
  let lastSources = null;

  function headers() {
    const h = { "Content-Type": "application/json" };
    if (apiKey) h["Authorization"] = "Bearer " + apiKey;
    return h;
  }

  function setStatus(text) { status.textContent = text; }

  function askForKey(message) {
    keyForm.hidden = false;
    form.hidden = true;
    setStatus(message);
    keyInput.value = "";
    keyInput.focus();
  }

  async function connect() {
    try {
      const r = await fetch("/v1/models", { headers: headers() });
      if (r.status === 401) { askForKey(t("need_key")); return; }
      if (!r.ok) { setStatus(t("not_ready", { status: r.status })); setTimeout(connect, 3000); return; }
      const body = await r.json();
      model = body.data.length ? body.data[0].id : null;
      keyForm.hidden = true;
      form.hidden = false;
      setStatus(t("ready") + " · " + (model || "model"));
      question.focus();
    } catch (e) {
      setStatus(t("unreachable"));
      setTimeout(connect, 3000);
    }
  }

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function addTurn(role, text) {
    const turn = el("article", "turn " + role);
    turn.appendChild(el("div", "who", role === "user" ? t("you") : t("expert")));
    const body = el("div", "text", text);
    turn.appendChild(body);
    conversation.appendChild(turn);
    turn.scrollIntoView({ block: "end" });
    return { turn, body };
  }

  function where(s) {
    const parts = [s.title || s.document, s.section].filter(Boolean);
    let w = parts.join(" › ");
    if (s.page !== null && s.page !== undefined) w += (w ? ", " : "") + t("page") + " " + s.page;
    return w || t("passage");
  }

  function renderSources(turn, sources) {
    const old = turn.querySelector(".sources");
    if (old) old.remove();
    if (!sources || !sources.length) return null;
    const box = el("section", "sources");
    box.setAttribute("aria-label", t("sources"));
    box.appendChild(el("h2", null, t("sources")));
    const cited = sources.filter((s) => s.cited);
    const shown = cited.length ? cited.concat(sources.filter((s) => !s.cited)) : sources;
    for (const s of shown) {
      const d = el("details", "source");
      d.dataset.n = String(s.n);
      const summary = el("summary", null, "[" + s.n + "] " + where(s) + (s.cited ? " (" + t("cited") + ")" : ""));
      d.appendChild(summary);
      d.appendChild(el("div", "passage", s.text));
      const meta = t("document") + " " + s.document + " · " + t("chunk") + " " + s.chunk_id +
        " · " + t("score") + " " +
        (typeof s.score === "number" ? s.score.toFixed(3) : s.score);
      d.appendChild(el("div", "meta", meta));
      box.appendChild(d);
    }
    turn.appendChild(box);
    return box;
  }

  // The grounding check's verdict: the evidence sentence is shown (highlighted) under the
  // answer, and marked inside its passage; a quoted or abstained answer replaces the draft.
  function renderEvidence(turn, grounding, evidence, sources) {
    const old = turn.querySelector(".evidence");
    if (old) old.remove();
    turn.dataset.grounding = grounding || "";
    if (!evidence || !evidence.length) return;
    const box = el("section", "evidence");
    box.setAttribute("aria-label", "Evidence");
    const byPassage = new Map();
    for (const e of evidence) {
      const line = el("p", "evidence-line");
      line.appendChild(el("span", "evidence-ref", "[" + e.passage + "] "));
      line.appendChild(el("mark", null, e.sentence));
      box.appendChild(line);
      if (!byPassage.has(e.passage)) byPassage.set(e.passage, []);
      byPassage.get(e.passage).push(e);
    }
    // Mark every evidence sentence inside its passage, in text order.
    for (const [n, spans] of byPassage) {
      const d = turn.querySelector('details.source[data-n="' + n + '"] .passage');
      const s = (sources || []).find((x) => x.n === n);
      if (!d || !s) continue;
      const ok = spans
        .filter((e) => e.end <= s.text.length && s.text.slice(e.start, e.end) === e.sentence)
        .sort((a, b) => a.start - b.start);
      if (!ok.length) continue;
      d.textContent = "";
      let at = 0;
      for (const e of ok) {
        if (e.start < at) continue;
        d.appendChild(document.createTextNode(s.text.slice(at, e.start)));
        d.appendChild(el("mark", null, e.sentence));
        at = e.end;
      }
      d.appendChild(document.createTextNode(s.text.slice(at)));
    }
    const text = turn.querySelector(".text");
    text.insertAdjacentElement("afterend", box);
  }

  function busy(on) {
    sendButton.disabled = on;
    stopButton.disabled = !on;
    question.readOnly = on;
  }

  async function ask(text) {
    addTurn("user", text);
    const { turn, body } = addTurn("assistant", "");
    turn.dataset.state = "streaming";
    body.textContent = "…";
    const messages = history.slice(-HISTORY_MESSAGES).concat([{ role: "user", content: text }]);
    controller = new AbortController();
    busy(true);
    let answer = "";
    let finished = false;
    try {
      const r = await fetch("/v1/chat/completions", {
        method: "POST",
        headers: headers(),
        body: JSON.stringify({ model: model || undefined, messages, stream: true }),
        signal: controller.signal,
      });
      if (r.status === 401) { turn.remove(); askForKey(t("key_rejected")); return; }
      if (!r.ok) {
        let msg = t("error_status", { status: r.status });
        try { msg = (await r.json()).error.message; } catch (e) { /* keep the status */ }
        throw new Error(msg);
      }
      const reader = r.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      body.textContent = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const event = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          for (const line of event.split("\n")) {
            if (!line.startsWith("data: ")) continue;
            const data = line.slice(6);
            if (data === "[DONE]") { finished = true; continue; }
            const chunk = JSON.parse(data);
            if (chunk.error) throw new Error(chunk.error.message);
            if (chunk.sources !== undefined) renderSources(turn, chunk.sources);
            if (chunk.abstained) turn.classList.add("abstained");
            if (chunk.grounding !== undefined) {
              if (chunk.grounding !== "supported" && typeof chunk.answer === "string") {
                answer = chunk.answer;  // the check replaced the model's draft
                body.textContent = answer;
              }
              renderEvidence(turn, chunk.grounding, chunk.evidence, chunk.sources);
            }
            const choice = chunk.choices && chunk.choices[0];
            if (choice && choice.delta && choice.delta.content) {
              answer += choice.delta.content;
              body.textContent = answer;
            }
          }
        }
      }
      if (!finished) throw new Error(t("cut_off"));
      history.push({ role: "user", content: text }, { role: "assistant", content: answer });
      lastSources = turn.querySelector(".sources");
      turn.dataset.state = "done";
    } catch (e) {
      if (e.name === "AbortError") {
        turn.dataset.state = "stopped";
        body.textContent = answer + (answer ? " " : "") + t("stopped");
      } else {
        turn.classList.add("error");
        turn.dataset.state = "error";
        body.textContent = t("could_not_answer", { message: e.message });
      }
    } finally {
      controller = null;
      busy(false);
      question.focus();
    }
  }

  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = question.value.trim();
    if (!text || controller) return;
    question.value = "";
    ask(text);
  });

  question.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.altKey && !ev.ctrlKey) {
      ev.preventDefault();
      form.requestSubmit();
    }
  });

  keyForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    apiKey = keyInput.value.trim();
    sessionStorage.setItem("expert-api-key", apiKey);
    connect();
  });

  stopButton.addEventListener("click", () => { if (controller) controller.abort(); });

  function newConversation() {
    if (controller) controller.abort();
    history = [];
    lastSources = null;
    conversation.textContent = "";
    question.value = "";
    question.focus();
    setStatus(t("new_conversation_status") + " · " + (model || "model"));
  }
  $("new").addEventListener("click", newConversation);

  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape" && controller) { ev.preventDefault(); controller.abort(); return; }
    if (!ev.altKey) return;
    const key = ev.key.toLowerCase();
    if (key === "n") { ev.preventDefault(); newConversation(); }
    else if (key === "q") { ev.preventDefault(); question.focus(); }
    else if (key === "s" && lastSources) {
      ev.preventDefault();
      const first = lastSources.querySelector("summary");
      if (first) first.focus();
    }
  });

  connect();
})();
