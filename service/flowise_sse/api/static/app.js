// The flowise-sse chat page: POST /v1/streams, then read the answer with EventSource.
//
// One question at a time. The answer is built from `token` events only: when the connection
// drops, EventSource reconnects by itself with Last-Event-ID and the gateway replays exactly what
// followed it, so appending every token received is exact (no duplicate, no gap). It is shown as
// Markdown while it streams (markdown.js), redrawn at most once per frame.
//
// Besides the question, what the chatflow's config offers (chatflow-settings.js): its welcome
// message and starter prompts, or its start form, in an empty conversation; attachments; feedback
// on answers; and approve/reject for a run that stopped for a human.
//
//   api.js                the gateway's API and its errors; the API key (this tab only)
//   conversation.js       the conversation per chatflow in localStorage; chatId and history sent
//   chatflow-settings.js  a chatflow's chatbot config, as far as the page uses it
//   markdown.js           Markdown to sanitised DOM, copy buttons on code
//   activity.js           reasoning, agent steps, sources and tools, collapsible
//   attachments.js        images and files within the upload policy; those a turn sent
//   feedback.js           thumbs up/down and a comment on an answer
//   approval.js           approve/reject a run waiting for a human
//   form-start.js         an Agentflow's start form
//   clipboard.js          copy, and say so
//   dom.js                DOM helpers and icons

import { newActivity, renderActivity, takeEnd, takeEvent } from "./activity.js";
import { ApiError, api, apiKey, apiUrl, authHeaders, failureOf, sentence, setApiKey } from "./api.js";
import { pausedAction, renderApproval, replyFields } from "./approval.js";
import { Tray, renderSent } from "./attachments.js";
import { NO_SETTINGS, chatflowSettings, forgetSettings } from "./chatflow-settings.js";
import { copyText } from "./clipboard.js";
import {
  clearConversation, emptyConversation, historyOf, loadConversation, rememberChatflow, rememberedChatflow,
  saveConversation,
} from "./conversation.js";
import { button, el, icon } from "./dom.js";
import { feedbackControls } from "./feedback.js";
import { formValues, renderFormStart } from "./form-start.js";
import { renderMarkdown } from "./markdown.js";

const STOP_GRACE_MS = 3000; // after a DELETE, how long to wait for the stream's own `aborted` event
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
// Relayed Flowise events the page shows (activity.js); EventSource has no "any event" listener.
const ACTIVITY_EVENTS = [
  "thinking", "agentReasoning", "nextAgent", "nextAgentFlow", "agent_trace", "calledTools", "sourceDocuments",
  "usedTools",
];

const $ = (id) => document.getElementById(id);
const ui = {
  chatflowField: $("chatflow-field"),
  chatflow: $("chatflow"),
  chatflowIdField: $("chatflow-id-field"),
  chatflowId: $("chatflow-id"),
  apiKey: $("api-key"),
  newChat: $("new-chat"),
  conversation: $("conversation"),
  empty: $("empty"),
  emptyHint: $("empty-hint"),
  welcome: $("welcome"),
  formStart: $("form-start"),
  starters: $("starters"),
  error: $("error"),
  form: $("ask"),
  question: $("question"),
  send: $("send"),
  stop: $("stop"),
  status: $("status"),
};

const state = {
  flowId: "", // the chatflow asked: picked from the listing, or typed when there is none
  conversation: emptyConversation(),
  settings: NO_SETTINGS, // what its chatbot config offers (chatflow-settings.js)
  views: [], // the DOM of each turn of the conversation, in order
  run: null, // the question being answered
};
// The uploads each turn sent, data and all, for as long as the page lives: they show its images
// without a round trip and let Regenerate send them again. The conversation keeps their names only.
const sentUploads = new WeakMap();

const tray = new Tray({
  list: $("attachments"),
  note: $("attach-note"),
  input: $("file-input"),
  attach: $("attach"),
  link: $("link"),
  linkRow: $("link-row"),
  linkUrl: $("link-url"),
  linkAdd: $("link-add"),
  linkCancel: $("link-cancel"),
}, {
  flowId: () => state.flowId,
  chatId: () => chatIdForFiles(),
  takenNames: () => state.conversation.turns.flatMap((turn) => turn.attachments.map((a) => a.name)),
  changed: () => refreshComposer(),
});

// --- status, errors --------------------------------------------------------------------------

function setStatus(kind, text) {
  ui.status.dataset.state = kind;
  ui.status.textContent = text;
}

// The banner is for what is not a turn's (the listing, a typed id); a turn's failure is shown
// once, in the turn, with its Retry.
function showError(message, detail) {
  ui.error.replaceChildren(message);
  if (detail) ui.error.append(" ", el("span", "error-code", `(${detail})`));
  ui.error.hidden = false;
}

function clearError() {
  ui.error.replaceChildren();
  ui.error.hidden = true;
}

function refreshComposer() {
  const busy = Boolean(state.run);
  // An Agentflow that starts with a form starts with it: the question box waits for the first turn.
  const formFirst = Boolean(state.settings.form) && state.conversation.turns.length === 0;
  ui.question.disabled = formFirst;
  ui.question.placeholder = formFirst ? "Fill in the form above to start" : "Ask something…";
  ui.send.disabled = busy || formFirst || tray.busy;
  ui.stop.disabled = !busy;
  ui.newChat.disabled = busy;
  ui.chatflow.disabled = busy;
  ui.chatflowId.disabled = busy;
}

// --- chatflows -------------------------------------------------------------------------------

function option(value, text) {
  const node = el("option", "", text);
  node.value = value;
  return node;
}

async function loadChatflows() {
  setStatus("loading", "Loading chatflows…");
  let flows;
  try {
    flows = await api("GET", "v1/chatflows");
  } catch (err) {
    listingUnavailable(err);
    return false;
  }
  clearError();
  ui.chatflowIdField.hidden = true;
  ui.chatflowField.hidden = false;
  const wanted = state.flowId || rememberedChatflow();
  ui.chatflow.replaceChildren(
    ...(flows.length ? flows.map((f) => option(f.id, f.name || f.id)) : [option("", "No chatflows")]),
  );
  if (wanted && flows.some((f) => f.id === wanted)) ui.chatflow.value = wanted;
  switchTo(ui.chatflow.value);
  setStatus("idle", flows.length ? "Ready" : "Flowise has no chatflows");
  return flows.length > 0;
}

function listingUnavailable(err) {
  const { code, message } = failureOf(err);
  ui.chatflow.replaceChildren(option("", "Unavailable"));
  if (err instanceof ApiError && err.status === 401) {
    // Every /v1/ route wants the key: a chatflow id typed by hand would not help.
    ui.chatflowIdField.hidden = true;
    ui.chatflowField.hidden = false;
    showError(`The chatflows could not be listed: ${message}`, code);
    setStatus("error", "A gateway API key is needed");
    return;
  }
  // Asking may still work where listing does not (Flowise 2.x and 3.x list only with
  // FLOWISE_API_KEY, but stream an open chatflow without it): let the id be typed.
  ui.chatflowField.hidden = true;
  ui.chatflowIdField.hidden = false;
  showError(`The chatflows could not be listed: ${message} Type a chatflow id instead.`, code);
  if (!ui.chatflowId.value) ui.chatflowId.value = state.flowId || rememberedChatflow();
  if (UUID.test(ui.chatflowId.value.trim())) switchTo(ui.chatflowId.value.trim().toLowerCase());
  if (state.flowId) setStatus("idle", "Ready");
  else setStatus("error", "No chatflow");
}

function takeTypedId() {
  const id = ui.chatflowId.value.trim();
  if (!UUID.test(id)) {
    showError("A chatflow id is a UUID, like 3c9866f3-f7de-4cf0-bcca-26807ac532c4.");
    ui.chatflowId.focus();
    return false;
  }
  switchTo(id.toLowerCase());
  setStatus("idle", "Ready");
  return true;
}

/** The chatflow to ask, found now if there is none yet; false (and why, shown) when there is none. */
async function chatflowToAsk() {
  if (state.flowId) return true;
  if (!ui.chatflowIdField.hidden) return takeTypedId();
  await loadChatflows();
  if (!state.flowId && !ui.chatflowIdField.hidden) ui.chatflowId.focus();
  return Boolean(state.flowId);
}

/** Show the conversation kept with `flowId`, and what its config offers. */
function switchTo(flowId) {
  if (state.run || flowId === state.flowId) return;
  state.flowId = flowId;
  if (flowId) rememberChatflow(flowId);
  state.conversation = flowId ? loadConversation(flowId) : emptyConversation();
  tray.clear(); // what was attached was for the other chatflow's chat
  useSettings(NO_SETTINGS);
  renderConversation();
  loadSettings();
}

function loadSettings() {
  const flowId = state.flowId;
  if (!flowId) return;
  chatflowSettings(flowId).then((settings) => {
    if (state.flowId !== flowId || settings === state.settings) return;
    useSettings(settings);
    renderEmpty();
    refreshTurnControls();
  });
}

function useSettings(settings) {
  state.settings = settings;
  tray.setPolicy(settings);
  refreshComposer();
}

/** The conversation's chat, made now if it has none yet: the attachments route stores files
 * under a chat before its first question. */
function chatIdForFiles() {
  const { conversation, flowId } = state;
  if (!conversation.chatId) {
    const bytes = crypto.getRandomValues(new Uint8Array(16)); // crypto.randomUUID needs https
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    const hex = [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
    conversation.chatId = `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
    saveConversation(flowId, conversation);
  }
  return conversation.chatId;
}

// --- the conversation ------------------------------------------------------------------------

function nearBottom() {
  const c = ui.conversation;
  return c.scrollHeight - c.scrollTop - c.clientHeight < 80;
}

function renderConversation() {
  for (const view of state.views) {
    view.user.remove();
    view.bot.remove();
  }
  state.views = state.conversation.turns.map((turn) => addTurnView(turn));
  renderEmpty();
  refreshTurnControls();
  refreshComposer();
  ui.conversation.scrollTop = ui.conversation.scrollHeight;
}

/** An empty conversation shows the chatflow's welcome message and starter prompts, or its start
 * form; without them, how to begin. */
function renderEmpty() {
  const { settings } = state;
  ui.empty.hidden = state.conversation.turns.length > 0;
  ui.emptyHint.hidden = Boolean(settings.welcome || settings.form);
  ui.welcome.hidden = !settings.welcome;
  if (settings.welcome) renderMarkdown(ui.welcome, settings.welcome);
  ui.formStart.hidden = !settings.form;
  if (settings.form) renderFormStart(ui.formStart, settings.form, (fields) => send({ form: fields }));
  else ui.formStart.replaceChildren();
  // A form start has no question to suggest.
  const starters = settings.form ? [] : settings.starters;
  ui.starters.hidden = starters.length === 0;
  ui.starters.replaceChildren(...starters.map((prompt) => {
    const starter = button(prompt, "secondary starter");
    starter.dataset.testid = "starter-prompt";
    starter.addEventListener("click", () => send({ question: prompt }, { withTray: true }));
    return starter;
  }));
}

function addTurnView(turn) {
  ui.empty.hidden = true;
  const { flowId, conversation } = state;
  const user = el("article", "turn user");
  user.setAttribute("aria-label", "You");
  const sent = el("div", "sent");
  const said = el("div", "bubble");
  showUser(said, turn);
  user.append(sent, said);
  renderSent(sent, turn.attachments, { flowId, chatId: turn.chatId, local: localImages(turn) });

  const bot = el("article", "turn assistant");
  bot.setAttribute("aria-label", "Answer");
  const before = el("div", "activity"); // reasoning and agent steps: what came before the answer
  const bubble = el("div", "bubble");
  const answer = el("div", "answer markdown");
  const note = el("p", "note");
  note.hidden = true;
  const extras = el("div", "extras"); // sources and tools
  const approval = el("div", "approval"); // a paused run's approve/reject
  approval.dataset.testid = "approval";
  approval.hidden = true;
  const actions = el("div", "turn-actions");
  const copy = button("Copy");
  copy.dataset.testid = "copy-answer";
  copy.setAttribute("aria-label", "Copy the answer (Markdown)");
  const again = button("Regenerate");
  const feedback = feedbackControls(turn, { flowId, save: () => saveConversation(flowId, conversation) });
  actions.append(copy, again, feedback.buttons);
  bubble.append(answer);
  bot.append(before, bubble, note, extras, approval, actions, feedback.panel);
  ui.conversation.append(user, bot);

  const view = { user, bot, before, answer, note, extras, approval, actions, copy, again, feedback, sections: {} };
  copy.addEventListener("click", () => copyText(turn.answer, copy));
  again.addEventListener("click", askAgain);
  showTurn(view, turn, false);
  return view;
}

/** What the user said: the question as typed, a form's values, or the reply to a paused run. */
function showUser(bubble, turn) {
  if (turn.reply) {
    bubble.classList.add("reply");
    bubble.append(el("strong", "", turn.reply.label));
    if (turn.reply.feedback) bubble.append("\n", turn.reply.feedback);
  } else if (turn.form) {
    bubble.classList.add("form");
    for (const field of turn.form) {
      const line = el("div");
      line.append(el("span", "form-label", `${field.label}: `), String(field.value));
      bubble.append(line);
    }
  } else {
    bubble.textContent = turn.question;
  }
}

/** The images a turn sent from this page, by name (after a reload, they are fetched back). */
function localImages(turn) {
  const uploads = sentUploads.get(turn);
  return uploads ? new Map(uploads.filter((u) => u.type === "file").map((u) => [u.name, u.data])) : null;
}

function showTurn(view, turn, streaming) {
  renderMarkdown(view.answer, turn.answer);
  renderActivity(view, turn.activity, streaming);
  view.bot.classList.toggle("streaming", streaming);
  view.bot.dataset.outcome = streaming ? "streaming" : turn.outcome;
  view.bot.classList.toggle("is-empty", !streaming && !turn.answer);
  view.bot.setAttribute("aria-busy", String(streaming));
  if (streaming) {
    view.note.hidden = true;
  } else if (turn.outcome === "stopped") {
    setNote(view, "stopped", "Stopped.");
  } else if (turn.outcome === "error" && turn.error) {
    setNote(view, "failed", turn.error.message, turn.error.code);
  } else {
    view.note.hidden = true;
  }
}

function setNote(view, kind, text, code) {
  view.note.className = `note ${kind}`;
  view.note.replaceChildren(text);
  if (code) view.note.append(" ", el("span", "error-code", `(${code})`));
  view.note.hidden = false;
}

// The last turn can be asked again: Retry after a failure, Regenerate otherwise. Test ids go
// on the latest turn only, so that tests find the one they mean.
function refreshTurnControls() {
  const last = state.views.length - 1;
  const running = state.run && state.run.turn;
  state.views.forEach((view, i) => {
    const turn = state.conversation.turns[i];
    const latest = i === last;
    const failed = turn.outcome === "error";
    view.again.hidden = !latest || turn === running || !canAskAgain(turn);
    view.again.disabled = Boolean(state.run);
    view.again.textContent = failed ? "Retry" : "Regenerate";
    view.copy.hidden = !turn.answer || turn === running;
    // Feedback needs the message Flowise stored the answer as.
    view.feedback.refresh(state.settings.feedback && turn.outcome === "done" && turn !== running
      && Boolean(turn.messageId && turn.chatId));
    const paused = latest && turn.waiting && !state.run;
    if (paused && view.approval.hidden) renderApproval(view.approval, turn.action, (reply) => send({ reply }));
    view.approval.hidden = !paused;
    const ids = [[view.answer, "answer"], [view.note, "turn-note"], [view.again, failed ? "retry" : "regenerate"]];
    for (const [node, testid] of ids) {
      if (latest) node.dataset.testid = testid;
      else delete node.dataset.testid;
    }
  });
}

function canAskAgain(turn) {
  // Its attachments' data went with the page that sent them.
  if (turn.attachments.length && !sentUploads.has(turn)) return false;
  // A reply that reached the paused run cannot reach it again: the run went on.
  return !turn.reply || turn.outcome === "error";
}

// --- one question ----------------------------------------------------------------------------

/**
 * Ask: `ask` is {question}, {form} (an Agentflow's start form: [{name, label, value}]) or {reply}
 * (to a paused run: approval.js), with the `uploads` and `attachments` of a turn asked again;
 * `withTray`: take the composer's attachments along.
 */
async function send(ask, { fromTheBox = false, withTray = false } = {}) {
  if (state.run) return;
  if (!ask.form && !ask.reply && !ask.question.trim()) {
    ui.question.focus();
    return;
  }
  if (withTray && tray.busy) return; // Send is disabled until the attachments are read
  if (!(await chatflowToAsk())) return;
  clearError();
  const { conversation, flowId } = state;
  const sent = withTray ? tray.take() : { uploads: ask.uploads || [], attachments: ask.attachments || [] };
  const body = { chatflowId: flowId };
  if (ask.reply) Object.assign(body, replyFields(ask.reply));
  else if (ask.form) body.form = formValues(ask.form);
  else body.question = ask.question;
  if (sent.uploads.length) body.uploads = sent.uploads;
  if (conversation.chatId) body.chatId = conversation.chatId;
  const history = historyOf(conversation);
  if (history.length) body.history = history;

  // A new turn answers a paused run, or passes it over: its buttons go.
  for (const earlier of conversation.turns) earlier.waiting = false;
  const turn = {
    question: ask.reply || ask.form ? "" : ask.question, form: ask.form || null, reply: ask.reply || null,
    attachments: sent.attachments, answer: "", outcome: "streaming", error: null, activity: newActivity(),
    chatId: null, messageId: null, feedback: null, action: null, waiting: false,
  };
  if (sent.uploads.length) sentUploads.set(turn, sent.uploads);
  conversation.turns.push(turn);
  const view = addTurnView(turn);
  state.views.push(view);
  showTurn(view, turn, true);
  ui.conversation.scrollTop = ui.conversation.scrollHeight;
  if (fromTheBox) ui.question.value = "";

  const run = {
    flowId, conversation, turn, view, text: "", es: null, streamId: null, stopping: false, done: false, timer: 0,
    frame: 0,
  };
  state.run = run;
  refreshComposer();
  refreshTurnControls();
  setStatus("sending", "Sending…");

  let created;
  try {
    created = await api("POST", "v1/streams", body);
  } catch (err) {
    finish(run, "error", failureOf(err));
    return;
  }
  run.streamId = created.streamId;
  view.bot.dataset.streamId = created.streamId;
  turn.chatId = created.chatId;
  if (!conversation.chatId) conversation.chatId = created.chatId;
  saveConversation(flowId, conversation);
  if (run.stopping) {
    deleteStream(run);
    return;
  }
  listen(run, new EventSource(eventsUrl(created.eventsUrl)));
}

/** Ask the last question again, in place of its answer. */
function askAgain() {
  const { conversation } = state;
  const last = conversation.turns[conversation.turns.length - 1];
  if (state.run || !last || !canAskAgain(last)) return;
  conversation.turns.pop();
  const view = state.views.pop();
  view.user.remove();
  view.bot.remove();
  if (last.outcome !== "error") {
    // Flowise stored the answer being replaced (a stopped one too: a chain runs on to its end)
    // under this chatId: go on under a fresh one, carrying the turns before as history.
    conversation.chatId = null;
    conversation.carried = conversation.turns.length;
  }
  saveConversation(state.flowId, conversation);
  send({
    question: last.question, form: last.form, reply: last.reply, uploads: sentUploads.get(last),
    attachments: last.attachments,
  });
}

// The gateway builds eventsUrl from what it sees of the request. Behind a TLS proxy it does not
// trust, that is http:// for an https:// page, which the browser would block as mixed content.
function eventsUrl(raw) {
  const url = new URL(raw, document.baseURI);
  if (url.host === location.host && url.protocol === "http:" && location.protocol === "https:") url.protocol = "https:";
  return url.toString();
}

function parse(event) {
  try {
    return JSON.parse(event.data);
  } catch {
    return null;
  }
}

// Tokens come faster than frames: the answer is redrawn once per frame, whatever came in it.
function redraw(run) {
  if (run.frame) return;
  run.frame = requestAnimationFrame(() => {
    run.frame = 0;
    if (run.done) return;
    const wasNear = nearBottom();
    run.turn.answer = run.text;
    showTurn(run.view, run.turn, true);
    if (wasNear) ui.conversation.scrollTop = ui.conversation.scrollHeight;
  });
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
    run.text += data.text;
    if (ui.status.dataset.state === "reconnecting") setStatus("streaming", "Streaming…");
    redraw(run);
  });
  for (const name of ACTIVITY_EVENTS) {
    on(name, (event) => {
      if (takeEvent(run.turn.activity, name, parse(event) ?? event.data)) redraw(run);
    });
  }
  on("end", (event) => {
    const data = parse(event) || {};
    if (!run.text && typeof data.text === "string") run.text = data.text; // a chatflow that streamed nothing
    takeEnd(run.turn.activity, data);
    if (typeof data.chatMessageId === "string") run.turn.messageId = data.chatMessageId; // what feedback rates
    const action = pausedAction(data);
    if (action) {
      run.turn.action = action;
      run.turn.waiting = true;
    }
    finish(run, "done");
  });
  on("error", (event) => {
    if (event.data) {
      // The contract's `error` event: the stream is over.
      const data = parse(event) || {};
      if (data.code === "aborted") finish(run, "stopped");
      else finish(run, "error", { code: String(data.code || "error"), message: sentence(data.message || "The answer failed.") });
      return;
    }
    // EventSource's own connection error: it reconnects with Last-Event-ID unless it gave up.
    if (es.readyState === EventSource.CLOSED) {
      finish(run, "error", { code: "stream_lost", message: "The stream could not be read (the gateway refused or lost it)." });
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
  // else: the POST is still in flight; send() stops the stream as soon as it has its id
}

async function deleteStream(run) {
  try {
    await api("DELETE", `v1/streams/${encodeURIComponent(run.streamId)}`);
  } catch (err) {
    if (!run.done) {
      const { code, message } = failureOf(err);
      finish(run, "error", { code, message: `The answer could not be stopped: ${message}` });
    }
    return;
  }
  if (!run.es) {
    finish(run, "stopped");
    return;
  }
  // Readers get an `aborted` error event; do not wait for it forever.
  run.timer = setTimeout(() => finish(run, "stopped"), STOP_GRACE_MS);
}

function finish(run, outcome, error = null) {
  if (run.done) return;
  run.done = true;
  clearTimeout(run.timer);
  cancelAnimationFrame(run.frame);
  if (run.es) run.es.close();
  if (state.run === run) state.run = null;

  const { turn, view } = run;
  turn.answer = run.text;
  turn.outcome = outcome;
  turn.error = outcome === "error" ? error : null;
  showTurn(view, turn, false);
  saveConversation(run.flowId, run.conversation);
  refreshComposer();
  refreshTurnControls();

  if (outcome === "done") setStatus("done", turn.waiting ? "Waiting for your decision" : "Done");
  else if (outcome === "stopped") setStatus("stopped", "Stopped");
  else setStatus("error", "Failed");
  const focused = document.activeElement;
  if (!focused || focused === document.body || focused === ui.stop || focused === ui.send) ui.question.focus();
}

function newChat() {
  if (state.run) return;
  clearConversation(state.flowId);
  state.conversation = emptyConversation();
  tray.clear(); // what was attached went to the chat just left
  renderConversation();
  clearError();
  setStatus("idle", "Ready");
  ui.question.focus();
}

// --- wiring ----------------------------------------------------------------------------------

const askFromTheBox = () => send({ question: ui.question.value }, { fromTheBox: true, withTray: true });

ui.form.addEventListener("submit", (event) => {
  event.preventDefault();
  askFromTheBox();
});

ui.question.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing && !event.altKey && !event.ctrlKey && !event.metaKey) {
    event.preventDefault();
    askFromTheBox();
  }
});

// Files come by the picker, by dropping them anywhere on the page, or pasted into the question.
// A file dropped where the chatflow takes none is refused with the reason, not opened by the
// browser in place of the page.
ui.question.addEventListener("paste", (event) => {
  const files = event.clipboardData && event.clipboardData.files;
  if (files && files.length) {
    event.preventDefault();
    tray.addFiles(files);
  }
});
const carriesFiles = (event) => Boolean(event.dataTransfer) && [...event.dataTransfer.types].includes("Files");
document.addEventListener("dragover", (event) => {
  if (!carriesFiles(event)) return;
  event.preventDefault();
  event.dataTransfer.dropEffect = "copy";
});
document.addEventListener("drop", (event) => {
  if (!carriesFiles(event)) return;
  event.preventDefault();
  tray.addFiles(event.dataTransfer.files);
});
$("attach").append(icon("paperclip"));
$("link").append(icon("link"));

document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && state.run) stop();
});

ui.stop.addEventListener("click", stop);
ui.newChat.addEventListener("click", newChat);
ui.chatflow.addEventListener("change", () => switchTo(ui.chatflow.value));
ui.chatflowId.addEventListener("change", takeTypedId);
ui.chatflowId.addEventListener("keydown", (event) => {
  if (event.key === "Enter") {
    event.preventDefault();
    if (takeTypedId()) ui.question.focus();
  }
});

ui.apiKey.value = apiKey();
ui.apiKey.addEventListener("input", () => setApiKey(ui.apiKey.value.trim()));
// Another key may see other chatflows, and their configs.
const keyChanged = () => {
  forgetSettings();
  loadChatflows().then(loadSettings);
};
ui.apiKey.addEventListener("change", keyChanged);
ui.apiKey.addEventListener("keydown", (event) => {
  if (event.key === "Enter") {
    event.preventDefault();
    keyChanged();
  }
});

// Leaving the page abandons the answer: stop it rather than let it run on for nobody, and keep
// what had come of it.
window.addEventListener("pagehide", () => {
  const run = state.run;
  if (!run) return;
  run.turn.answer = run.text;
  run.turn.outcome = "stopped";
  saveConversation(run.flowId, run.conversation);
  if (!run.streamId) return;
  fetch(apiUrl(`v1/streams/${encodeURIComponent(run.streamId)}`), {
    method: "DELETE",
    keepalive: true,
    headers: authHeaders(),
  }).catch(() => {});
});

loadChatflows();
