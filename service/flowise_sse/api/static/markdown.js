// Answers as Markdown: marked 18.3.0 makes the HTML, DOMPurify 3.5.0 keeps only what Markdown
// needs (vendor/README.md: where they come from, their licences).
//
// What an answer says is never trusted: an LLM repeats what it read, and what it read may be an
// attacker's page. So raw HTML in an answer is shown as text (but for a few bare inline tags),
// and whatever marked makes goes through DOMPurify with a short list of tags and attributes: no
// script, no event handler, no `javascript:` or `data:` link, no SVG or MathML, no form, no
// style, no class but a code block's language. Links open in a new tab without access back to
// this page. The page's Content-Security-Policy (`script-src 'self'`) is the last line behind this.

import { Marked } from "./vendor/marked.esm.js";
import DOMPurify from "./vendor/purify.es.js";
import { copyText } from "./clipboard.js";

// Bare tags LLMs put inside Markdown (a <br> in a table cell, <sup>2</sup>): kept as HTML when
// they carry no attribute at all; any other raw HTML is shown as its source text.
const BARE_INLINE_TAG = /^<\/?(?:br|sub|sup|kbd|b|i|u|s|em|strong|del|mark)\s*\/?>$/i;
const CODE_LANGUAGE = /^language-[\w+#.-]{1,40}$/;

const SANITIZE = {
  ALLOWED_TAGS: [
    "a", "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "strong", "em", "b", "i", "u", "s", "del",
    "mark", "sub", "sup", "kbd", "code", "pre", "blockquote", "ul", "ol", "li", "input",
    "table", "thead", "tbody", "tr", "th", "td",
  ],
  ALLOWED_ATTR: ["href", "title", "class", "start", "align", "type", "checked", "disabled"],
  ALLOW_DATA_ATTR: false,
  ALLOW_ARIA_ATTR: false,
  RETURN_DOM_FRAGMENT: true,
};

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.hasAttribute("class") && !(node.nodeName === "CODE" && CODE_LANGUAGE.test(node.getAttribute("class")))) {
    node.removeAttribute("class"); // an answer must not dress itself up as the page's own UI
  }
  if (node.nodeName === "A") {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  } else if (node.nodeName === "INPUT") {
    // Only a task list's box ("- [x] done") makes one: shown, never an input of the page's.
    node.setAttribute("type", "checkbox");
    node.setAttribute("disabled", "");
  }
});

function escapeHtml(text) {
  return String(text)
    .replaceAll("&", "&amp;")
    .replaceAll("<", "&lt;")
    .replaceAll(">", "&gt;")
    .replaceAll('"', "&quot;")
    .replaceAll("'", "&#39;");
}

const markdown = new Marked({ gfm: true, breaks: false });
markdown.use({
  renderer: {
    html(token) {
      if (!token.block && BARE_INLINE_TAG.test(token.text.trim())) return token.text;
      return token.block ? `<p>${escapeHtml(token.text)}</p>` : escapeHtml(token.text);
    },
    // The page may load images only from itself (its CSP), so an answer's image is a link to it.
    image(token) {
      return `<a href="${escapeHtml(token.href)}">${escapeHtml(token.text || token.href)}</a>`;
    },
  },
});

/** Render `source` (the answer so far, or whole) into `target`, replacing what was there. */
export function renderMarkdown(target, source) {
  const html = markdown.parse(source, { async: false });
  target.replaceChildren(DOMPurify.sanitize(html, SANITIZE));
  for (const pre of target.querySelectorAll("pre")) addCopyButton(pre);
}

function addCopyButton(pre) {
  const code = pre.querySelector("code");
  const language = code && code.className.replace(/^language-/, "");
  const button = document.createElement("button");
  button.type = "button";
  button.className = "copy-code";
  button.dataset.testid = "copy-code";
  button.textContent = "Copy";
  button.setAttribute("aria-label", language ? `Copy the ${language} code` : "Copy the code");
  button.addEventListener("click", () => copyText((code || pre).textContent, button));
  pre.classList.add("has-copy");
  pre.append(button);
}
