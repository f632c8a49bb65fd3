// A chatflow's chatbot config (GET /v1/chatflows/{id}/config: Flowise's public chatbot config),
// read once per chatflow and boiled down to what the page offers: the welcome message and starter
// prompts of an empty conversation, feedback on answers, the upload policy, an Agentflow's form
// start.

import { api } from "./api.js";

const MB = 1024 * 1024;

/** What a chatflow without a config (or whose config could not be read) gets: plain questions. */
export const NO_SETTINGS = Object.freeze({
  welcome: "", starters: [], feedback: false, images: null, files: null, form: null,
});

const read = new Map(); // chatflow id -> Promise of its settings

/** The settings of `flowId`, read once. A chatflow answers questions without its config, so a
 * failure here is not shown: the page offers plain questions, and asks again next time. */
export function chatflowSettings(flowId) {
  if (!read.has(flowId)) {
    const settings = api("GET", `v1/chatflows/${encodeURIComponent(flowId)}/config`).then(settingsOf, () => {
      read.delete(flowId);
      return NO_SETTINGS;
    });
    read.set(flowId, settings);
  }
  return read.get(flowId);
}

/** Read every config again (another API key may see them otherwise). */
export function forgetSettings() {
  read.clear();
}

export function settingsOf(config) {
  if (!config || typeof config !== "object") return NO_SETTINGS;
  return {
    welcome: typeof config.welcomeMessage === "string" ? config.welcomeMessage.trim() : "",
    starters: startersOf(config.starterPrompts),
    feedback: Boolean(config.chatFeedback && config.chatFeedback.status),
    images: imagePolicy(config.uploads),
    files: filePolicy(config.fullFileUpload),
    form: formOf(config),
  };
}

// Flowise keeps them as {"0": {"prompt": "..."}, "1": ...}, in the order of their keys.
function startersOf(value) {
  if (!value || typeof value !== "object") return [];
  const entries = Array.isArray(value) ? value.map((v, i) => [i, v]) : Object.entries(value);
  return entries
    .sort(([a], [b]) => Number(a) - Number(b))
    .map(([, v]) => (v && typeof v === "object" ? v.prompt : v))
    .filter((prompt) => typeof prompt === "string" && prompt.trim())
    .map((prompt) => prompt.trim());
}

/** Images the chat model takes, as `file` (or `url`) uploads: each media type with its largest
 * size (`imgUploadSizeAndTypes`, sizes in MB); null when it takes none. */
function imagePolicy(uploads) {
  if (!uploads || !uploads.isImageUploadAllowed || !Array.isArray(uploads.imgUploadSizeAndTypes)) return null;
  const maxBytes = new Map();
  for (const entry of uploads.imgUploadSizeAndTypes) {
    const size = entry && Number(entry.maxUploadSize);
    const limit = Number.isFinite(size) && size > 0 ? size * MB : Infinity;
    for (const type of (entry && Array.isArray(entry.fileTypes) ? entry.fileTypes : [])) {
      // Flowise splits "image/gif;...;image/webp;" on ";", which leaves an empty type.
      if (typeof type !== "string" || !type.trim()) continue;
      const mime = type.trim().toLowerCase();
      maxBytes.set(mime, Math.max(maxBytes.get(mime) || 0, limit));
    }
  }
  return maxBytes.size ? { maxBytes } : null;
}

/** Files whose text the chatflow takes whole (`fullFileUpload`: the attachments route, then
 * `file:full` uploads): their media types, or null for any (Flowise then decides). */
function filePolicy(full) {
  if (!full || !full.status) return null;
  const types = String(full.allowedUploadFileTypes || "").split(",").map((t) => t.trim().toLowerCase())
    .filter(Boolean);
  return { types: types.length ? types : null };
}

/** An Agentflow that starts with a form: its title, description and inputs (`formInputTypes`). */
function formOf(config) {
  if (config.startInputType !== "formInput" || !Array.isArray(config.formInputTypes)) return null;
  const inputs = config.formInputTypes
    .filter((input) => input && typeof input.name === "string" && input.name)
    .map((input) => ({
      name: input.name,
      label: typeof input.label === "string" && input.label ? input.label : input.name,
      type: ["string", "number", "boolean", "options"].includes(input.type) ? input.type : "string",
      options: optionsOf(input.addOptions),
    }));
  if (!inputs.length) return null;
  return {
    title: typeof config.formTitle === "string" ? config.formTitle : "",
    description: typeof config.formDescription === "string" ? config.formDescription : "",
    inputs,
  };
}

// An "options" input's choices: Flowise stores them as [{option: "..."}] ("" when there are none).
function optionsOf(value) {
  if (!Array.isArray(value)) return [];
  return value.map((o) => (o && typeof o === "object" ? o.option : o)).filter((o) => typeof o === "string" && o);
}
