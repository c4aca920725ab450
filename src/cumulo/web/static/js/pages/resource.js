// The shape of most resource pages: a create form on one line, and a live table whose rows
// carry their actions.
import { ApiError } from "../api.js";
import { act, clearErrors, field, h, notify, poll, replace, setError, table } from "../ui.js";

// A form of `inputs` ({name, label, el, hint}); `submit(values)` calls the API. An API error
// is shown next to the input its code or message names (`errorField`), else under the form.
export function createForm({ id, inputs, label, submit, errorField = () => null }) {
  const button = h("button", { type: "submit", class: "primary", text: label });
  const form = h("form", { class: "panel inline-form", id, novalidate: true },
    inputs.map((i) => field(i.label, i.el, { name: i.name, hint: i.hint })),
    h("div", { class: "field" }, h("span", { class: "hint", text: "\u00a0" }), button),
    h("div", { class: "error", "data-error-for": "form", role: "alert", style: "flex-basis:100%" }));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearErrors(form);
    const values = Object.fromEntries(inputs.map((i) => [i.name, i.el.type === "checkbox" ? i.el.checked : i.el.value.trim()]));
    button.disabled = true;
    try {
      await submit(values);
      for (const i of inputs) if (i.el.type !== "checkbox" && i.el.tagName !== "SELECT") i.el.value = i.el.defaultValue;
    } catch (e) {
      if (!(e instanceof ApiError)) throw e;
      const where = errorField(e) || inputs.find((i) => (e.detail || "").startsWith(i.name))?.name;
      if (!where || !setError(form, where, e.detail)) setError(form, "form", e.detail);
    } finally {
      button.disabled = false;
    }
  });
  return form;
}

// A row action: a button that shows its progress and its error.
export function rowAction(label, busy, fn, cls) {
  return h("button", { type: "button", class: cls, text: label,
    onclick: (ev) => act(ev.currentTarget, busy, fn) });
}

// A live table: `load()` is polled every `ms` and the table redrawn when the data changed.
export function liveTable(container, { load, columns, empty, ms = 2000, onData }) {
  let shown = "";
  let failed = false;
  const stop = poll(async () => {
    try {
      const rows = await load();
      failed = false;
      if (onData) onData(rows);
      const key = JSON.stringify(rows);
      if (key === shown) return;
      shown = key;
      replace(container, table(columns, rows, { empty }));
    } catch (e) {
      if (!failed) notify(e.detail || e.message, true);
      failed = true;
    }
  }, ms);
  return { stop, refresh: () => { shown = ""; } };
}
