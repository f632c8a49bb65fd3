// A run that stopped for a human: its `end` carries the `action` and `waitingForInput: true`.
// Under the answer, the action's buttons (approve, reject) and, for an Agentflow, a feedback
// text; a choice is sent as a new question on the same chat, and the rest of the run streams in
// as its answer.
//
// Flowise 3.x (Agentflow V2: a Human Input node, an Agent node's tool approval) continues with
// `humanInput: {type: proceed | reject, startNodeId, feedback}`. Flowise 2.x sequential agents
// continue with the chosen button's label as `question` and the `action` sent back, as Flowise's
// own chat does; they take no feedback text.

import { button, el } from "./dom.js";

/** The action of a run waiting for input, from its `end`; null for a run that finished. */
export function pausedAction(end) {
  return end && end.waitingForInput === true && end.action && typeof end.action === "object" ? end.action : null;
}

function isAgentflow(action) {
  const elements = Array.isArray(action.elements) ? action.elements : [];
  return elements.length === 0 || elements.some((e) => e && String(e.type).startsWith("agentflowv2-"));
}

/** The action's two choices with their labels: Flowise's buttons, else its mapping. */
export function choicesOf(action) {
  const elements = Array.isArray(action.elements) ? action.elements : [];
  const mapping = action.mapping && typeof action.mapping === "object" ? action.mapping : {};
  return [["approve", "proceed", "Proceed"], ["reject", "reject", "Reject"]].map(([name, type, fallback]) => {
    const element = elements.find((e) => e && typeof e.type === "string" && e.type.endsWith(`${name}-button`));
    const label = (element && element.label) || mapping[name] || fallback;
    return { type, label: String(label) };
  });
}

/** What the reply sends, and what its turn shows: {label, feedback, humanInput} or {label, action}. */
export function replyTo(action, choice, feedback) {
  if (!isAgentflow(action)) return { label: choice.label, feedback: "", humanInput: null, action };
  const humanInput = { type: choice.type };
  const node = action.data && action.data.nodeId;
  if (typeof node === "string" && node) humanInput.startNodeId = node;
  if (feedback) humanInput.feedback = feedback;
  return { label: choice.label, feedback, humanInput, action: null };
}

/** The request fields of a reply (beside chatflowId and chatId). */
export function replyFields(reply) {
  if (reply.humanInput) return { humanInput: reply.humanInput };
  return { question: reply.label, action: reply.action };
}

/** Fill `container` with the paused run's choices; `onReply(reply)` when one is made. */
export function renderApproval(container, action, onReply) {
  const node = action.data && typeof action.data.nodeLabel === "string" ? action.data.nodeLabel : "";
  const head = el("p", "approval-title");
  head.append("The run is waiting for your decision");
  if (node) head.append(" at ", el("strong", "", node));
  head.append(".");
  container.replaceChildren(head);

  let text = null;
  if (isAgentflow(action)) {
    const label = el("label", "visually-hidden", "Feedback for the run (optional)");
    text = el("textarea");
    text.dataset.testid = "approval-feedback";
    text.rows = 2;
    text.placeholder = "Feedback for the run (optional)";
    text.id = "approval-feedback";
    label.htmlFor = text.id;
    container.append(label, text);
  }
  const row = el("div", "approval-actions");
  for (const choice of choicesOf(action)) {
    const choose = button(choice.label, choice.type === "proceed" ? "small" : "secondary small");
    choose.dataset.testid = choice.type === "proceed" ? "approve" : "reject";
    choose.addEventListener("click", () => onReply(replyTo(action, choice, text ? text.value.trim() : "")));
    row.append(choose);
  }
  container.append(row);
}
