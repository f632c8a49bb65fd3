// Small DOM helpers the page's modules share, and its few icons (drawn here as SVG elements: the
// page loads nothing from elsewhere, and no emoji font can be counted on).

export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

export function button(text, className = "secondary small") {
  const node = el("button", className, text);
  node.type = "button";
  return node;
}

const SVG = "http://www.w3.org/2000/svg";
const THUMB = "M7 10v11H3V10zM7 10l4-8c1.7 0 3 1.3 3 3v4h5.5a2 2 0 0 1 2 2.3l-1.4 8A2 2 0 0 1 18.1 21H7";
const PATHS = {
  thumbsUp: [THUMB],
  thumbsDown: [THUMB], // the same hand, turned over (below)
  paperclip: ["M16 6v10a4 4 0 0 1-8 0V5a2.5 2.5 0 0 1 5 0v10a1 1 0 0 1-2 0V7"],
  link: ["M10 14a4 4 0 0 0 5.7 0l3-3a4 4 0 0 0-5.7-5.7l-1 1", "M14 10a4 4 0 0 0-5.7 0l-3 3a4 4 0 0 0 5.7 5.7l1-1"],
  file: ["M6 2h8l4 4v16H6z", "M14 2v4h4"],
};

/** One of the icons above, sized by the text around it, hidden from screen readers (the control
 * that holds it has the label). */
export function icon(name) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("class", `icon icon-${name}`);
  const group = document.createElementNS(SVG, "g");
  if (name === "thumbsDown") group.setAttribute("transform", "rotate(180 12 12)");
  for (const d of PATHS[name]) {
    const path = document.createElementNS(SVG, "path");
    path.setAttribute("d", d);
    group.append(path);
  }
  svg.append(group);
  return svg;
}

export function iconButton(name, label, className = "icon-button") {
  const node = button("", className);
  node.setAttribute("aria-label", label);
  node.title = label;
  node.append(icon(name));
  return node;
}
