// The conversation with each chatflow, kept in localStorage across reloads, and what the next
// question sends so that Flowise's memory follows it.
//
// A conversation keeps one Flowise chatId until "New chat": the page sends that chatId and no
// history, and the chatflow's memory (keyed by chatId) holds the conversation, as in Flowise's
// own chat. Regenerating an answer is the exception: Flowise has stored the answer it replaces,
// so the conversation moves to a fresh chatId and from then on sends the turns before it as
// `history` (`carried`), which Flowise puts before what it stores under the new chatId.
//
// A turn is what was asked (a question, a form start, or the reply to a paused run; and what was
// attached, by name) and what came back: the answer, its outcome, its activity, the chat and
// message Flowise stored it under (for feedback), the feedback given, and the action of a run
// that waits for a reply.

import { isActivity, newActivity } from "./activity.js";
import { formText } from "./form-start.js";

const PREFIX = "flowise-sse.conversation.";
const CHATFLOW_KEY = "flowise-sse.chatflow";
const MAX_TURNS = 200;
const OUTCOMES = new Set(["done", "stopped", "error"]);
const RATINGS = new Set(["THUMBS_UP", "THUMBS_DOWN"]);
const UPLOAD_TYPES = new Set(["file", "url", "file:full"]);

export function emptyConversation() {
  return { chatId: null, carried: 0, turns: [] };
}

function storage() {
  try {
    return window.localStorage;
  } catch {
    return null; // disabled: the conversation lasts as long as the page
  }
}

function validTurn(turn) {
  return Boolean(turn) && typeof turn === "object" && typeof turn.question === "string"
    && typeof turn.answer === "string";
}

function text(value) {
  return typeof value === "string" && value ? value : null;
}

function validAttachment(item) {
  return Boolean(item) && typeof item === "object" && UPLOAD_TYPES.has(item.type) && typeof item.name === "string"
    && typeof item.mime === "string" && (item.type !== "url" || /^https?:\/\//i.test(String(item.url)));
}

function formOf(value) {
  if (!Array.isArray(value)) return null;
  const fields = value.filter((f) => f && typeof f.name === "string" && typeof f.label === "string"
    && ["string", "number", "boolean"].includes(typeof f.value));
  return fields.length ? fields : null;
}

function replyOf(value) {
  if (!value || typeof value !== "object" || typeof value.label !== "string") return null;
  const humanInput = value.humanInput && typeof value.humanInput === "object" ? value.humanInput : null;
  const action = value.action && typeof value.action === "object" ? value.action : null;
  if (!humanInput && !action) return null;
  return { label: value.label, feedback: typeof value.feedback === "string" ? value.feedback : "", humanInput, action };
}

/** What the user said in a turn, as text: the question, the form's values, or the reply. */
export function userText(turn) {
  if (turn.reply) return turn.reply.feedback ? `${turn.reply.label}: ${turn.reply.feedback}` : turn.reply.label;
  if (turn.form) return formText(turn.form);
  return turn.question;
}

/** The stored conversation with `chatflowId`, or an empty one (also for a record it cannot read). */
export function loadConversation(chatflowId) {
  const store = storage();
  let data = null;
  try {
    data = JSON.parse((store && store.getItem(PREFIX + chatflowId)) || "null");
  } catch {
    data = null;
  }
  if (!data || typeof data !== "object" || !Array.isArray(data.turns)) return emptyConversation();
  const turns = data.turns.filter(validTurn).map((turn) => {
    const action = turn.action && typeof turn.action === "object" ? turn.action : null;
    return {
      question: turn.question,
      form: formOf(turn.form),
      reply: replyOf(turn.reply),
      attachments: Array.isArray(turn.attachments) ? turn.attachments.filter(validAttachment) : [],
      answer: turn.answer,
      // A turn still streaming when the page went away was stopped by it (see app.js's pagehide).
      outcome: OUTCOMES.has(turn.outcome) ? turn.outcome : "stopped",
      error: turn.error && typeof turn.error.message === "string"
        ? { code: String(turn.error.code || "error"), message: turn.error.message } : null,
      activity: isActivity(turn.activity) ? turn.activity : newActivity(),
      chatId: text(turn.chatId),
      messageId: text(turn.messageId),
      feedback: turn.feedback && text(turn.feedback.id) && RATINGS.has(turn.feedback.rating)
        ? { id: turn.feedback.id, rating: turn.feedback.rating, content: text(turn.feedback.content) } : null,
      action,
      waiting: turn.waiting === true && action !== null,
    };
  });
  return {
    chatId: typeof data.chatId === "string" && data.chatId ? data.chatId : null,
    carried: Math.min(Number.isInteger(data.carried) && data.carried > 0 ? data.carried : 0, turns.length),
    turns,
  };
}

/** Store it; when the browser's quota is reached, the oldest turns go first. */
export function saveConversation(chatflowId, conversation) {
  const store = storage();
  if (!store || !chatflowId) return;
  let { turns, carried } = conversation;
  if (turns.length > MAX_TURNS) {
    carried = Math.max(0, carried - (turns.length - MAX_TURNS));
    turns = turns.slice(-MAX_TURNS);
  }
  for (;;) {
    try {
      store.setItem(PREFIX + chatflowId, JSON.stringify({ chatId: conversation.chatId, carried, turns }));
      return;
    } catch {
      if (!turns.length) return;
      turns = turns.slice(1);
      carried = Math.max(0, carried - 1);
    }
  }
}

export function clearConversation(chatflowId) {
  const store = storage();
  if (store && chatflowId) store.removeItem(PREFIX + chatflowId);
}

/** What the next question sends as history: the carried turns that have an answer. */
export function historyOf(conversation) {
  const history = [];
  for (const turn of conversation.turns.slice(0, conversation.carried)) {
    if (turn.outcome === "error" || !turn.answer) continue;
    history.push({ role: "user", content: userText(turn) }, { role: "assistant", content: turn.answer });
  }
  return history;
}

export function rememberedChatflow() {
  const store = storage();
  return (store && store.getItem(CHATFLOW_KEY)) || "";
}

export function rememberChatflow(chatflowId) {
  const store = storage();
  try {
    if (chatflowId) store.setItem(CHATFLOW_KEY, chatflowId);
    else store.removeItem(CHATFLOW_KEY);
  } catch {
    /* full or disabled: the choice lasts as long as the page */
  }
}
