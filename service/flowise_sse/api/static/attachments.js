// Attachments, within the chatflow's upload policy (chatflow-settings.js): images go to Flowise as
// `file` uploads (a base64 data URI) or, given by link, as `url` uploads; other files go through
// POST /v1/chatflows/{id}/attachments when attached, which stores them under the chat and answers
// their text, then go with the question as `file:full` uploads of that text. A file the policy
// refuses (its type, its size) is refused here, with the reason, before anything is sent.
//
// A turn keeps what it sent by name only (a conversation in localStorage cannot hold images):
// its images are shown fetched back from where Flowise stored them (GET .../files).

import { api, apiBlob, failureOf } from "./api.js";
import { button, el, icon } from "./dom.js";

const MB = 1024 * 1024;
const LINK_TYPES = { png: "image/png", jpg: "image/jpeg", jpeg: "image/jpeg", gif: "image/gif", webp: "image/webp" };

// --- the policy ---------------------------------------------------------------------------

function size(bytes) {
  if (bytes === Infinity) return "any size";
  if (bytes < MB) return `${Math.max(1, Math.round(bytes / 1024))} KB`;
  return `${(bytes / MB).toFixed(1).replace(/\.0$/, "")} MB`;
}

function typeName(mime) {
  return mime.startsWith("image/") ? mime.slice(6).toUpperCase() : mime;
}

/** What the chatflow takes, in a sentence's words: "images (PNG, JPEG up to 5 MB) and files (text/plain)". */
export function describePolicy(settings) {
  const parts = [];
  if (settings.images) {
    const limits = [...settings.images.maxBytes.values()];
    const same = limits.every((limit) => limit === limits[0]);
    const types = [...settings.images.maxBytes.keys()].map(typeName).join(", ");
    parts.push(`images (${types}${same && limits[0] !== Infinity ? `, up to ${size(limits[0])}` : ""})`);
  }
  if (settings.files) parts.push(settings.files.types ? `files of type ${settings.files.types.join(", ")}` : "files");
  return parts.length ? `this chatflow takes ${parts.join(" and ")}` : "this chatflow takes no attachments";
}

/** The upload a file makes under `settings` ({kind: "image" | "file"}), or why it makes none. */
export function classify(file, settings) {
  const mime = (file.type || "").toLowerCase();
  const images = settings.images;
  if (images && images.maxBytes.has(mime)) {
    const limit = images.maxBytes.get(mime);
    if (file.size > limit) {
      return { refused: `${file.name} is ${size(file.size)}: this chatflow takes images up to ${size(limit)}.` };
    }
    return { kind: "image" };
  }
  const files = settings.files;
  if (files && mime && (!files.types || files.types.includes(mime))) return { kind: "file" };
  return { refused: `${file.name} (${mime || "of unknown type"}) cannot be attached: ${describePolicy(settings)}.` };
}

/** A name Flowise can store the file under (the gateway refuses /, \, .. and control characters). */
function plainName(name) {
  const plain = String(name || "").replace(/[/\\\x00-\x1f\x7f]/g, "_").replace(/\.{2,}/g, ".").trim();
  return (plain.length > 200 ? plain.slice(-200) : plain) || "file";
}

/** `name`, or name-2.ext, name-3.ext...: Flowise stores a chat's files by name, and a second
 * file of the same name would replace the first one shown in an earlier turn. */
function freeName(name, taken) {
  if (!taken.has(name)) return name;
  const dot = name.lastIndexOf(".");
  const [stem, ext] = dot > 0 ? [name.slice(0, dot), name.slice(dot)] : [name, ""];
  for (let n = 2; ; n += 1) {
    const candidate = `${stem}-${n}${ext}`;
    if (!taken.has(candidate)) return candidate;
  }
}

function readDataUri(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result));
    reader.onerror = () => reject(reader.error || new Error("The file could not be read."));
    reader.readAsDataURL(blob);
  });
}

// --- the tray: what the next question takes ----------------------------------------------

/** The composer's attachments: chips with previews, the file picker, drop and paste, a link. */
export class Tray {
  /**
   * `ui`: the composer's elements (list, note, input, attach, link, linkRow, linkUrl, linkAdd,
   * linkCancel); `hooks`: flowId() the chatflow, chatId() the conversation's chat (made if it has
   * none: the attachments route stores files under one), takenNames() the names its turns sent,
   * changed() after the tray changed (busy or not, empty or not).
   */
  constructor(ui, hooks) {
    this.ui = ui;
    this.hooks = hooks;
    this.settings = { images: null, files: null }; // until the chatflow's policy is known: none
    this.items = [];
    ui.attach.addEventListener("click", () => ui.input.click());
    ui.input.addEventListener("change", () => {
      this.addFiles(ui.input.files);
      ui.input.value = ""; // the same file may be picked again
    });
    ui.link.addEventListener("click", () => this.showLinkRow(ui.linkRow.hidden));
    ui.linkCancel.addEventListener("click", () => this.showLinkRow(false));
    ui.linkAdd.addEventListener("click", () => this.addLink(ui.linkUrl.value));
    ui.linkUrl.addEventListener("keydown", (event) => {
      if (event.key === "Enter") {
        event.preventDefault();
        this.addLink(ui.linkUrl.value);
      } else if (event.key === "Escape") {
        event.stopPropagation();
        this.showLinkRow(false);
      }
    });
  }

  /** The chatflow's policy (chatflow-settings.js). */
  setPolicy(settings) {
    this.settings = settings;
    const { images, files } = settings;
    const { ui } = this;
    ui.attach.hidden = !images && !files;
    ui.link.hidden = !images;
    const accept = [...(images ? images.maxBytes.keys() : []), ...(files && files.types ? files.types : [])];
    ui.input.accept = files && !files.types ? "" : accept.join(",");
    const takes = describePolicy(settings);
    ui.attach.title = `Attach: ${takes}`;
    ui.attach.setAttribute("aria-label", `Attach images or files (${takes})`);
  }

  /** Still reading or uploading one. */
  get busy() {
    return this.items.some((item) => item.status !== "ready");
  }

  get empty() {
    return this.items.length === 0;
  }

  clear() {
    this.items = [];
    this.showLinkRow(false);
    this.say("");
    this.render();
  }

  /** The uploads for the next question and what its turn keeps of them; the tray is emptied. */
  take() {
    const items = this.items;
    this.items = [];
    this.say("");
    this.render();
    const type = { image: "file", link: "url", file: "file:full" };
    return {
      uploads: items.map((item) => ({ data: item.data, type: type[item.kind], name: item.name, mime: item.mime })),
      attachments: items.map((item) => ({
        type: type[item.kind], name: item.name, mime: item.mime, ...(item.kind === "link" ? { url: item.data } : {}),
      })),
    };
  }

  addFiles(list) {
    const refusals = [];
    for (const file of list) {
      const verdict = classify(file, this.settings);
      if (verdict.refused) {
        refusals.push(verdict.refused);
        continue;
      }
      const item = this.add(verdict.kind, file.name, (file.type || "").toLowerCase(), file.size);
      if (verdict.kind === "image") this.read(item, file);
      else this.upload(item, file);
    }
    this.say(refusals.join(" "));
  }

  addLink(raw) {
    const images = this.settings.images;
    let url;
    try {
      url = new URL(String(raw).trim());
    } catch {
      url = null;
    }
    if (!images || !url || !["http:", "https:"].includes(url.protocol)) {
      this.say("An image link is an http(s) address, like https://example.com/picture.png.");
      this.ui.linkUrl.focus();
      return;
    }
    const last = decodeURIComponent(url.pathname.split("/").pop() || "");
    const ext = (last.match(/\.([a-z0-9]+)$/i) || [])[1];
    // Flowise takes a link's image as image/png unless told otherwise.
    const mime = LINK_TYPES[(ext || "").toLowerCase()] || "image/png";
    if (!images.maxBytes.has(mime)) {
      this.say(`${last || url.host} is a ${mime} image: ${describePolicy(this.settings)}.`);
      return;
    }
    const item = this.add("link", last || "image", mime, null);
    item.data = url.href;
    item.status = "ready";
    this.showLinkRow(false);
    this.say("");
    this.render();
  }

  showLinkRow(shown) {
    const { ui } = this;
    ui.linkRow.hidden = !shown;
    ui.link.setAttribute("aria-expanded", String(shown));
    if (shown) ui.linkUrl.focus();
    else ui.linkUrl.value = "";
  }

  // --- inside ---

  add(kind, name, mime, bytes) {
    const taken = new Set([...this.hooks.takenNames(), ...this.items.map((i) => i.name)]);
    const item = { kind, name: freeName(plainName(name), taken), mime, bytes, data: "", status: "reading" };
    this.items.push(item);
    this.render();
    return item;
  }

  async read(item, file) {
    try {
      item.data = await readDataUri(file);
      item.status = "ready";
    } catch (err) {
      this.drop(item, `${item.name} could not be read: ${failureOf(err).message}`);
      return;
    }
    this.render();
  }

  async upload(item, file) {
    item.status = "uploading";
    this.render();
    const flowId = this.hooks.flowId();
    const form = new FormData();
    form.append("files", file, item.name);
    let answer;
    try {
      const chat = encodeURIComponent(this.hooks.chatId());
      answer = await api("POST", `v1/chatflows/${encodeURIComponent(flowId)}/attachments?chatId=${chat}`, form);
    } catch (err) {
      const { code, message } = failureOf(err);
      this.drop(item, `${item.name} could not be attached: ${message} (${code})`);
      return;
    }
    if (!this.items.includes(item)) return; // removed, or another chatflow, meanwhile
    const text = Array.isArray(answer) && answer[0] && answer[0].content;
    if (typeof text !== "string") {
      this.drop(item, `${item.name} could not be attached: Flowise extracted no text from it.`);
      return;
    }
    item.data = text;
    item.status = "ready";
    this.render();
  }

  drop(item, why) {
    if (!this.items.includes(item)) return;
    this.items = this.items.filter((i) => i !== item);
    this.say(why);
    this.render();
  }

  say(text) {
    this.ui.note.textContent = text;
    this.ui.note.hidden = !text;
  }

  render() {
    const { list } = this.ui;
    list.replaceChildren(...this.items.map((item) => this.chip(item)));
    list.hidden = this.items.length === 0;
    this.hooks.changed();
  }

  chip(item) {
    const chip = el("li", `chip ${item.kind}`);
    chip.dataset.testid = "attachment";
    chip.dataset.status = item.status;
    if (item.kind === "image" && item.data) {
      const img = el("img", "thumb");
      img.alt = "";
      img.src = item.data;
      chip.append(img);
    } else {
      chip.append(icon(item.kind === "link" ? "link" : "file"));
    }
    const label = el("span", "chip-label");
    label.append(el("span", "chip-name", item.name));
    const state = { reading: "reading…", uploading: "extracting its text…" }[item.status];
    const detail = state || (item.kind === "link" ? new URL(item.data).host : item.bytes !== null ? size(item.bytes) : "");
    label.append(el("span", "chip-detail", detail));
    const remove = button("×", "chip-remove");
    remove.setAttribute("aria-label", `Remove ${item.name}`);
    remove.addEventListener("click", () => {
      this.items = this.items.filter((i) => i !== item);
      this.render();
    });
    chip.append(label, remove);
    return chip;
  }
}

// --- what a turn sent ------------------------------------------------------------------------

const stored = new Map(); // "flow|chat|name" -> Promise of the stored image as a data URI (or null)

/** The image Flowise stored under the chat, fetched through the gateway (with the API key, which
 * an <img src> could not send) and shown as a data URI (the page's CSP: img-src 'self' data:). */
function storedImage(flowId, chatId, name) {
  const key = `${flowId}|${chatId}|${name}`;
  if (!stored.has(key)) {
    const query = `chatId=${encodeURIComponent(chatId)}&fileName=${encodeURIComponent(name)}`;
    const image = apiBlob(`v1/chatflows/${encodeURIComponent(flowId)}/files?${query}`)
      .then((blob) => (blob.type.startsWith("image/") ? readDataUri(blob) : null))
      .catch(() => {
        stored.delete(key); // asked again on the next showing
        return null;
      });
    stored.set(key, image);
  }
  return stored.get(key);
}

/**
 * Show a turn's attachments in `container`: images (the data just sent, in `local` by name, or
 * else fetched back from Flowise), links to images, files by name.
 */
export function renderSent(container, attachments, { flowId, chatId, local }) {
  container.replaceChildren();
  container.hidden = attachments.length === 0;
  for (const item of attachments) {
    if (item.type === "file" && item.mime.startsWith("image/")) {
      const figure = el("figure", "sent-image");
      figure.dataset.testid = "sent-image";
      const img = el("img");
      img.alt = item.name;
      img.title = item.name;
      figure.append(img);
      container.append(figure);
      const data = local && local.get(item.name);
      const missing = () => figure.replaceWith(sentChip("file", `${item.name} (not stored)`, "sent-file"));
      if (data) img.src = data;
      else if (!chatId) missing(); // the question never reached Flowise
      else {
        storedImage(flowId, chatId, item.name).then((uri) => {
          if (uri) img.src = uri;
          else missing();
        });
      }
    } else if (item.type === "url") {
      const link = el("a", "chip sent-link");
      link.dataset.testid = "sent-link";
      link.href = item.url;
      link.target = "_blank";
      link.rel = "noopener noreferrer";
      link.append(icon("link"), el("span", "chip-name", item.name));
      container.append(link);
    } else {
      container.append(sentChip("file", item.name, "sent-file"));
    }
  }
}

function sentChip(glyph, text, testid) {
  const chip = el("span", "chip");
  chip.dataset.testid = testid;
  chip.append(icon(glyph), el("span", "chip-name", text));
  return chip;
}
