// What an answer did besides its text: reasoning (`thinking`), agent steps (`agentReasoning`,
// `nextAgent`, `nextAgentFlow`, `agent_trace`, `calledTools`), sources (`sourceDocuments`) and
// tools (`usedTools`). Each goes into a small, plain-JSON record per turn (kept with the
// conversation, so previews only), shown as collapsed <details> sections.

import { el } from "./dom.js";

const PREVIEW_CHARS = 600;

export function newActivity() {
  return { thinking: "", thoughtFor: null, steps: [], sources: [], tools: [] };
}

function preview(value) {
  if (value === undefined || value === null) return "";
  const text = typeof value === "string" ? value : JSON.stringify(value, null, 2);
  return text.length > PREVIEW_CHARS ? `${text.slice(0, PREVIEW_CHARS)}…` : text;
}

function list(value) {
  if (Array.isArray(value)) return value;
  return value === undefined || value === null ? [] : [value];
}

function sourceOf(doc, i) {
  const meta = (doc && doc.metadata) || {};
  return {
    name: String(meta.source || meta.title || meta.url || `Document ${i + 1}`),
    content: preview(doc && doc.pageContent !== undefined ? doc.pageContent : doc),
  };
}

function toolOf(tool) {
  return {
    name: String((tool && tool.tool) || "tool"),
    input: tool && tool.toolInput !== undefined ? preview(tool.toolInput) : null,
    output: tool && tool.toolOutput !== undefined ? preview(tool.toolOutput) : null,
  };
}

function step(activity, key, fields) {
  const known = key ? activity.steps.find((s) => s.key === key) : null;
  if (known) Object.assign(known, fields);
  else activity.steps.push({ key: key || null, title: "", detail: "", status: "", ...fields });
}

/** Take one relayed event into `activity`; true when it was one of the kinds shown. */
export function takeEvent(activity, name, data) {
  switch (name) {
    case "thinking": // reasoning text in pieces; the last one carries how long it took
      if (typeof data === "string") activity.thinking += data;
      else if (data && typeof data === "object") {
        if (typeof data.text === "string") activity.thinking += data.text;
        if (typeof data.duration === "number") activity.thoughtFor = data.duration;
      }
      return true;
    case "sourceDocuments":
      activity.sources = list(data).map(sourceOf);
      return true;
    case "usedTools":
      activity.tools = list(data).map(toolOf);
      return true;
    case "agentReasoning": // sequential and multi agents: [{agentName, messages, ...}]
      for (const agent of list(data)) {
        const messages = list(agent && agent.messages).filter((m) => typeof m === "string");
        step(activity, null, { title: String((agent && agent.agentName) || "Agent"), detail: preview(messages.join("\n")) });
      }
      return true;
    case "nextAgent":
      step(activity, null, { title: `Handed over to ${preview(data)}` });
      return true;
    case "nextAgentFlow": // an agentflow node: INPROGRESS, then FINISHED (or ERROR, STOPPED)
      if (data && typeof data === "object") {
        step(activity, `node:${data.nodeId}`, { title: String(data.nodeLabel || data.nodeId || "Step"), status: String(data.status || "") });
      }
      return true;
    case "calledTools":
      for (const tool of list(data)) {
        if (tool && tool.tool) step(activity, null, { title: `Calls ${tool.tool}`, detail: preview(tool.toolInput) });
      }
      return true;
    case "agent_trace":
      if (data && typeof data === "object") {
        const key = data.runId ? `run:${data.runId}` : null;
        if (data.step === "tool_start") step(activity, key, { title: `Calls ${data.name || "a tool"}`, detail: preview(data.input) });
        else if (data.step === "tool_end") step(activity, key, { status: "done", result: preview(data.output) });
        else if (data.step === "tool_error") step(activity, key, { status: "error", result: preview(data.error) });
        else step(activity, null, { title: String(data.step || "Agent step"), detail: preview(data.action || data.messages || "") });
      }
      return true;
    // Not `action`: a run that stopped for a human sends it again in its `end`, where
    // app.js takes it for the approve/reject buttons (approval.js).
    default:
      return false;
  }
}

/** What the `end` event repeats (the socket.io lines send these only there, at times). */
export function takeEnd(activity, end) {
  if (!end || typeof end !== "object") return;
  if (!activity.sources.length && Array.isArray(end.sourceDocuments)) takeEvent(activity, "sourceDocuments", end.sourceDocuments);
  if (!activity.tools.length && Array.isArray(end.usedTools)) takeEvent(activity, "usedTools", end.usedTools);
  if (!activity.steps.length && Array.isArray(end.agentReasoning)) takeEvent(activity, "agentReasoning", end.agentReasoning);
}

/** Whether a stored record is one this code can show. */
export function isActivity(value) {
  return Boolean(value) && typeof value === "object" && typeof value.thinking === "string"
    && Array.isArray(value.steps) && Array.isArray(value.sources) && Array.isArray(value.tools);
}

// --- showing it ----------------------------------------------------------------------------

// One <details> per kind, made once and then only refilled, so one the user opened stays open.
function section(view, where, kind, title) {
  let entry = view.sections[kind];
  if (!entry) {
    const details = el("details", `extra ${kind}`);
    details.dataset.testid = kind;
    const summary = el("summary");
    const body = el("div", "extra-body");
    details.append(summary, body);
    where.append(details);
    entry = view.sections[kind] = { details, summary, body };
  }
  entry.summary.textContent = title;
  entry.body.replaceChildren();
  return entry.body;
}

/** Show `activity` in a turn's view (`view.before`: above the answer; `view.extras`: below). */
export function renderActivity(view, activity, streaming) {
  if (activity.thinking) {
    const title = activity.thoughtFor !== null
      ? `Reasoning · ${Math.max(1, Math.round(activity.thoughtFor))} s` // Flowise counts seconds
      : streaming ? "Reasoning…" : "Reasoning";
    section(view, view.before, "thinking", title).append(el("p", "thinking-text", activity.thinking));
  }
  if (activity.steps.length) {
    const body = section(view, view.before, "steps", `Agent steps (${activity.steps.length})`);
    const items = el("ol");
    for (const s of activity.steps) {
      const li = el("li");
      const head = el("p", "step-title", s.title);
      if (s.status) head.append(" ", el("span", `step-status ${s.status.toLowerCase()}`, s.status.toLowerCase()));
      li.append(head);
      if (s.detail) li.append(el("pre", "", s.detail));
      if (s.result) li.append(el("p", "label", "Result"), el("pre", "", s.result));
      items.append(li);
    }
    body.append(items);
  }
  if (activity.sources.length) {
    const count = activity.sources.length;
    const body = section(view, view.extras, "sourceDocuments", count === 1 ? "Source (1)" : `Sources (${count})`);
    const items = el("ol");
    for (const doc of activity.sources) {
      const li = el("li");
      li.append(el("p", "source-name", doc.name), el("blockquote", "", doc.content));
      items.append(li);
    }
    body.append(items);
  }
  if (activity.tools.length) {
    const count = activity.tools.length;
    const body = section(view, view.extras, "usedTools", count === 1 ? "Tool used (1)" : `Tools used (${count})`);
    const items = el("ol");
    for (const tool of activity.tools) {
      const li = el("li");
      li.append(el("p", "tool-name", tool.name));
      if (tool.input !== null) li.append(el("p", "label", "Input"), el("pre", "", tool.input));
      if (tool.output !== null) li.append(el("p", "label", "Output"), el("pre", "", tool.output));
      items.append(li);
    }
    body.append(items);
  }
}
