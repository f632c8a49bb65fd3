// Copy to the clipboard, and say so on the button that asked.

const SHOWN_MS = 1500;

export async function copyText(text, button) {
  let copied = false;
  try {
    // Only in a secure context (https, or localhost): a gateway reached over plain http by
    // name or address has no navigator.clipboard.
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
      copied = true;
    }
  } catch {
    /* refused (no permission, page not focused): try the old way */
  }
  if (!copied) copied = copyWithSelection(text);
  if (button) flash(button, copied ? "Copied" : "Copy failed");
  return copied;
}

function copyWithSelection(text) {
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.className = "offscreen";
  document.body.append(area);
  area.select();
  let ok = false;
  try {
    ok = document.execCommand("copy");
  } catch {
    ok = false;
  }
  area.remove();
  return ok;
}

function flash(button, text) {
  const label = button.dataset.label || button.textContent;
  button.dataset.label = label;
  button.textContent = text;
  button.dataset.copied = text === "Copied" ? "yes" : "no";
  clearTimeout(Number(button.dataset.timer));
  button.dataset.timer = String(
    setTimeout(() => {
      button.textContent = label;
      delete button.dataset.copied;
    }, SHOWN_MS),
  );
}
