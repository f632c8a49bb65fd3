// An Agentflow that starts with a form (its config's `formInputTypes`): the form, in the empty
// conversation, in place of a first question. Its values go as `form`, without `question`.

import { button, el } from "./dom.js";

/** Fill `container` with the form; `onSubmit(fields)`: [{name, label, value}], in the form's order. */
export function renderFormStart(container, form, onSubmit) {
  const node = el("form", "form-start");
  node.dataset.testid = "form-start";
  if (form.title) node.append(el("h2", "form-title", form.title));
  if (form.description) node.append(el("p", "form-description", form.description));
  const read = form.inputs.map((input, i) => {
    const id = `form-start-${i}`;
    const field = el("div", `form-field ${input.type}`);
    const label = el("label", "", input.label);
    label.htmlFor = id;
    let control;
    if (input.type === "boolean") {
      control = el("input");
      control.type = "checkbox";
    } else if (input.type === "options") {
      control = el("select");
      for (const option of input.options) {
        const choice = el("option", "", option);
        choice.value = option;
        control.append(choice);
      }
    } else {
      control = el("input");
      control.type = input.type === "number" ? "number" : "text";
      if (input.type === "number") control.step = "any";
    }
    control.id = id;
    control.name = input.name;
    field.append(label, control);
    node.append(field);
    return () => {
      let value = control.value;
      if (input.type === "boolean") value = control.checked;
      else if (input.type === "number") value = control.value === "" ? null : Number(control.value);
      return { name: input.name, label: input.label, value };
    };
  });
  const start = button("Start", "");
  start.type = "submit";
  start.dataset.testid = "form-submit";
  node.append(start);
  node.addEventListener("submit", (event) => {
    event.preventDefault();
    // An empty number is left out: Flowise would take null for a value given.
    onSubmit(read.map((value) => value()).filter((field) => field.value !== null));
  });
  container.replaceChildren(node);
}

/** The `form` a start sends: its values by name. */
export function formValues(fields) {
  return Object.fromEntries(fields.map((field) => [field.name, field.value]));
}

/** How a form start reads in its turn, and in the history sent on a regenerate. */
export function formText(fields) {
  return fields.map((field) => `${field.label}: ${field.value}`).join("\n");
}
