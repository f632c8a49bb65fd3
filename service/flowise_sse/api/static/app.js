// The flowise-sse chat page: POST /v1/streams, then read the answer with EventSource.
//
// One question at a time. The answer is built from `token` events only: when the connection
// drops, EventSource reconnects by itself with Last-Event-ID and the gateway replays exactly what
// followed it, so appending every token received is exact (no duplicate, no gap).

const KEY_STORAGE = "flowise-sse.apiKey";
const FLOW_STORAGE = "flowise-sse.chatflow";
const STOP_GRACE_MS = 3000; // after a DELETE, how long to wait for the stream's own `aborted` event
const PREVIEW_CHARS = 600;

const $ = (id) => document.getElementById(id);
const ui = {
  chatflow: $("chatflow"),
  apiKey: $("api-key"),
  newChat: $("new-chat"),
  conversation: $("conversation"),
  empty: $("empty"),
  error: $("error"),
  form: $("ask"),
  question: $("question"),
  send: $("send"),
  stop: $("stop"),
  status: $("status"),
};

const state = {
  history: [], // [{role: "user" | "assistant", content}], oldest first
  run: null, // the question being answered
};

// --- HTTP ------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function apiKey() {
  try {
    return sessionStorage.getItem(KEY_STORAGE) || "";
  } catch {
    return "";
  }
}

function remember(key, value) {
  try {
    if (value) sessionStorage.setItem(key, value);
    else sessionStorage.removeItem(key);
  } catch {
    /* storage disabled: the value just lives as long as the page */
  }
}

async function api(method, path, body, options = {}) {
  const headers = {};
  const key = apiKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(new URL(path, document.baseURI), {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      ...options,
    });
  } catch {
    throw new ApiError(0, "network_error", "Could not reach the gateway (offline, or the browser blocked the request).");
  }
  if (response.ok) return response.status === 204 ? null : response.json();
  let code = `http_${response.status}`;
  let message = response.statusText || "the request failed";
  try {
    const data = await response.json();
    if (data && data.error) {
      code = data.error.code || code;
      message = data.error.message || message;
    }
  } catch {
    /* not JSON: keep the status line */
  }
  throw new ApiError(response.status, code, message);
}

function describe(err) {
  if (!(err instanceof ApiError)) return String(err && err.message ? err.message : err);
  if (err.status === 0) return err.message;
  const label = `HTTP ${err.status} ${err.code}`;
  if (err.status === 401) {
    return `${label}: this gateway needs an API key. Enter it under “Gateway API key”. (${err.message})`;
  }
  return `${label}: ${err.message}`;
}

function parse(event) {
  try {
    return JSON.parse(event.data);
  } catch {
    return null;
  }
}

// --- status, errors ----------------------------------------------------------------------------

function setStatus(kind, text) {
  ui.status.dataset.state = kind;
  ui.status.textContent = text;
}

function showError(text) {
  ui.error.textContent = text;
  ui.error.hidden = false;
}

function clearError() {
  ui.error.textContent = "";
  ui.error.hidden = true;
}

function setBusy(busy) {
  ui.send.disabled = busy;
  ui.stop.disabled = !busy;
  ui.newChat.disabled = busy;
  ui.chatflow.disabled = busy;
}

// --- chatflows -------------------------------------------------------------------------------

function option(value, text) {
  const el = document.createElement("option");
  el.value = value;
  el.textContent = text;
  return el;
}

async function loadChatflows() {
  setStatus("loading", "Loading chatflows…");
  let flows;
  try {
    flows = await api("GET", "v1/chatflows");
  } catch (err) {
    ui.chatflow.replaceChildren(option("", "Unavailable"));
    showError(describe(err));
    setStatus("error", "Could not load the chatflows");
    return false;
  }
  clearError();
  const wanted = ui.chatflow.value || sessionStorageGet(FLOW_STORAGE);
  ui.chatflow.replaceChildren(
    ...(flows.length ? flows.map((f) => option(f.id, f.name || f.id)) : [option("", "No chatflows")]),
  );
  if (wanted && flows.some((f) => f.id === wanted)) ui.chatflow.value = wanted;
  setStatus("idle", flows.length ? "Ready" : "Flowise has no chatflows");
  return flows.length > 0;
}

function sessionStorageGet(key) {
  try {
    return sessionStorage.getItem(key);
  } catch {
    return null;
  }
}

// --- the conversation ------------------------------------------------------------------------

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function nearBottom() {
  const c = ui.conversation;
  return c.scrollHeight - c.scrollTop - c.clientHeight < 80;
}

function follow(wasNear) {
  if (wasNear) ui.conversation.scrollTop = ui.conversation.scrollHeight;
}

function addTurn(question) {
  ui.empty.hidden = true;
  // Only the latest turn's answer carries the test id.
  for (const old of ui.conversation.querySelectorAll('[data-testid="answer"]')) old.removeAttribute("data-testid");

  const user = el("article", "turn user");
  user.setAttribute("aria-label", "You");
  user.append(el("div", "bubble", question));

  const bot = el("article", "turn assistant streaming");
  bot.setAttribute("aria-label", "Answer");
  bot.setAttribute("aria-busy", "true");
  const bubble = el("div", "bubble");
  const answer = el("div", "answer");
  answer.dataset.testid = "answer";
  const note = el("p", "note");
  note.dataset.testid = "turn-note";
  note.hidden = true;
  const extras = el("div", "extras");
  bubble.append(answer);
  bot.append(bubble, note, extras);

  ui.conversation.append(user, bot);
  ui.conversation.scrollTop = ui.conversation.scrollHeight;
  return { bot, answer, note, extras, sections: {} };
}

function setNote(turn, kind, text) {
  turn.note.className = `note ${kind}`;
  turn.note.textContent = text;
  turn.note.hidden = false;
}

function preview(text) {
  const s = typeof text === "string" ? text : JSON.stringify(text, null, 2);
  return s && s.length > PREVIEW_CHARS ? `${s.slice(0, PREVIEW_CHARS)}…` : s || "";
}

function section(turn, kind, title, count) {
  let entry = turn.sections[kind];
  if (!entry) {
    const details = el("details", `extra ${kind}`);
    details.dataset.testid = kind;
    const summary = el("summary");
    const list = el("ol");
    details.append(summary, list);
    turn.extras.append(details);
    entry = turn.sections[kind] = { summary, list };
  }
  entry.summary.textContent = `${title} (${count})`;
  entry.list.replaceChildren();
  return entry.list;
}

function showSources(turn, docs) {
  const items = Array.isArray(docs) ? docs : [docs];
  if (!items.length) return;
  const list = section(turn, "sourceDocuments", items.length === 1 ? "Source" : "Sources", items.length);
  items.forEach((doc, i) => {
    const meta = (doc && doc.metadata) || {};
    const li = el("li");
    li.append(
      el("p", "source-name", String(meta.source || meta.title || meta.url || `Document ${i + 1}`)),
      el("blockquote", "", preview(doc && doc.pageContent !== undefined ? doc.pageContent : doc)),
    );
    list.append(li);
  });
}

function showTools(turn, tools) {
  const items = Array.isArray(tools) ? tools : [tools];
  if (!items.length) return;
  const list = section(turn, "usedTools", items.length === 1 ? "Tool used" : "Tools used", items.length);
  for (const tool of items) {
    const li = el("li");
    li.append(el("p", "tool-name", String((tool && tool.tool) || "tool")));
    if (tool && tool.toolInput !== undefined) {
      li.append(el("p", "label", "Input"), el("pre", "", preview(tool.toolInput)));
    }
    if (tool && tool.toolOutput !== undefined) {
      li.append(el("p", "label", "Output"), el("pre", "", preview(tool.toolOutput)));
    }
    list.append(li);
  }
}

// --- one question ----------------------------------------------------------------------------

async function ask() {
  if (state.run) return;
  const question = ui.question.value;
  if (!question.trim()) {
    ui.question.focus();
    return;
  }
  if (!ui.chatflow.value && !(await loadChatflows())) return;
  const chatflowId = ui.chatflow.value;
  clearError();
  const turn = addTurn(question);
  ui.question.value = "";
  const run = { turn, question, text: "", es: null, streamId: null, stopping: false, done: false, timer: 0 };
  state.run = run;
  setBusy(true);
  setStatus("sending", "Sending…");

  let created;
  try {
    created = await api("POST", "v1/streams", { chatflowId, question, history: state.history });
  } catch (err) {
    finish(run, "error", describe(err));
    return;
  }
  run.streamId = created.streamId;
  run.turn.bot.dataset.streamId = created.streamId;
  run.turn.bot.dataset.chatId = created.chatId;
  if (run.stopping) {
    deleteStream(run);
    return;
  }
  listen(run, new EventSource(eventsUrl(created.eventsUrl)));
}

// The gateway builds eventsUrl from what it sees of the request. Behind a TLS proxy it does not
// trust, that is http:// for an https:// page, which the browser would block as mixed content.
function eventsUrl(raw) {
  const url = new URL(raw, document.baseURI);
  if (url.host === location.host && url.protocol === "http:" && location.protocol === "https:") url.protocol = "https:";
  return url.toString();
}

function listen(run, es) {
  run.es = es;
  const on = (name, handler) =>
    es.addEventListener(name, (event) => {
      if (!run.done) handler(event);
    });

  on("open", () => {
    if (!run.stopping) setStatus("streaming", "Streaming…");
  });
  on("start", () => {
    if (!run.stopping) setStatus("streaming", "Streaming…");
  });
  on("token", (event) => {
    const data = parse(event);
    if (!data || typeof data.text !== "string") return;
    const wasNear = nearBottom();
    run.text += data.text;
    run.turn.answer.textContent = run.text;
    if (ui.status.dataset.state === "reconnecting") setStatus("streaming", "Streaming…");
    follow(wasNear);
  });
  on("metadata", (event) => {
    run.metadata = parse(event);
  });
  on("sourceDocuments", (event) => showSources(run.turn, parse(event)));
  on("usedTools", (event) => showTools(run.turn, parse(event)));
  on("end", (event) => {
    const data = parse(event) || {};
    if (!run.text && typeof data.text === "string") {
      run.text = data.text; // nothing streamed (should not happen: the gateway sends one token at least)
      run.turn.answer.textContent = run.text;
    }
    if (!run.turn.sections.sourceDocuments && Array.isArray(data.sourceDocuments)) showSources(run.turn, data.sourceDocuments);
    if (!run.turn.sections.usedTools && Array.isArray(data.usedTools)) showTools(run.turn, data.usedTools);
    finish(run, "done");
  });
  on("error", (event) => {
    if (event.data) {
      // The contract's `error` event: the stream is over.
      const data = parse(event) || {};
      if (data.code === "aborted") {
        finish(run, "stopped");
      } else {
        const code = data.code || "error";
        const hint = data.retryable ? " You can try again." : "";
        finish(run, "error", `${data.message || "The answer failed."} (${code})${hint}`);
      }
      return;
    }
    // EventSource's own connection error: it reconnects with Last-Event-ID unless it gave up.
    if (es.readyState === EventSource.CLOSED) {
      finish(run, "error", "The stream could not be read (the gateway refused or lost it).");
    } else if (!run.stopping) {
      setStatus("reconnecting", "Connection lost, reconnecting…");
    }
  });
}

async function stop() {
  const run = state.run;
  if (!run || run.stopping || run.done) return;
  run.stopping = true;
  ui.stop.disabled = true;
  setStatus("stopping", "Stopping…");
  if (run.streamId) await deleteStream(run);
  // else: the POST is still in flight; ask() stops the stream as soon as it has its id
}

async function deleteStream(run) {
  try {
    await api("DELETE", `v1/streams/${encodeURIComponent(run.streamId)}`);
  } catch (err) {
    if (!run.done) finish(run, "error", `Could not stop the answer: ${describe(err)}`);
    return;
  }
  if (!run.es) {
    finish(run, "stopped");
    return;
  }
  // Readers get an `aborted` error event; do not wait for it forever.
  run.timer = setTimeout(() => finish(run, "stopped"), STOP_GRACE_MS);
}

function finish(run, outcome, message) {
  if (run.done) return;
  run.done = true;
  clearTimeout(run.timer);
  if (run.es) run.es.close();
  if (state.run === run) state.run = null;

  const { bot } = run.turn;
  bot.classList.remove("streaming");
  bot.classList.add(`is-${outcome}`);
  if (!run.text) bot.classList.add("is-empty");
  bot.setAttribute("aria-busy", "false");

  if (outcome === "done") {
    state.history.push({ role: "user", content: run.question }, { role: "assistant", content: run.text });
    setStatus("done", "Done");
  } else if (outcome === "stopped") {
    if (run.text) {
      // Keep what was said: the next question may refer to it.
      state.history.push({ role: "user", content: run.question }, { role: "assistant", content: run.text });
    }
    setNote(run.turn, "stopped", "Stopped.");
    setStatus("stopped", "Stopped");
  } else {
    setNote(run.turn, "failed", message);
    showError(message);
    setStatus("error", "Failed");
  }
  setBusy(false);
  const focused = document.activeElement;
  if (!focused || focused === document.body || focused === ui.stop || focused === ui.send) ui.question.focus();
}

function newChat() {
  if (state.run) return;
  state.history = [];
  ui.conversation.replaceChildren(ui.empty);
  ui.empty.hidden = false;
  clearError();
  setStatus("idle", "Ready");
  ui.question.focus();
}

// --- wiring ----------------------------------------------------------------------------------

ui.form.addEventListener("submit", (event) => {
  event.preventDefault();
  ask();
});

ui.question.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing && !event.altKey && !event.ctrlKey && !event.metaKey) {
    event.preventDefault();
    ask();
  }
});

document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && state.run) stop();
});

ui.stop.addEventListener("click", stop);
ui.newChat.addEventListener("click", newChat);

ui.chatflow.addEventListener("change", () => remember(FLOW_STORAGE, ui.chatflow.value));

ui.apiKey.value = apiKey();
ui.apiKey.addEventListener("input", () => remember(KEY_STORAGE, ui.apiKey.value.trim()));
ui.apiKey.addEventListener("change", () => loadChatflows());
ui.apiKey.addEventListener("keydown", (event) => {
  if (event.key === "Enter") {
    event.preventDefault();
    loadChatflows();
  }
});

// Leaving the page abandons the answer: stop it rather than let it run on for nobody.
window.addEventListener("pagehide", () => {
  const run = state.run;
  if (!run || !run.streamId) return;
  const key = apiKey();
  fetch(new URL(`v1/streams/${encodeURIComponent(run.streamId)}`, document.baseURI), {
    method: "DELETE",
    keepalive: true,
    headers: key ? { Authorization: `Bearer ${key}` } : {},
  }).catch(() => {});
});

loadChatflows();
