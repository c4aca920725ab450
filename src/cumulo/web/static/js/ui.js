// Small DOM helpers. Text always goes in as text (never as HTML): names and messages come
// from users.
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k in el && typeof v !== "string") el[k] = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

let seq = 0;
export const uid = (p) => `${p}-${++seq}`;

// A labelled control with its hint and its error line (aria-describedby both).
export function field(label, control, { hint, name } = {}) {
  const id = control.id || (control.id = uid("f"));
  const err = h("div", { class: "error", id: id + "-err", "data-error-for": name || "" });
  const hintEl = hint ? h("div", { class: "hint", id: id + "-hint", text: hint }) : null;
  control.setAttribute("aria-describedby", [hintEl && hintEl.id, err.id].filter(Boolean).join(" "));
  return h("div", { class: "field" }, h("label", { for: id, text: label }), control, hintEl, err);
}

export function setError(container, name, message) {
  const err = container.querySelector(`[data-error-for="${name}"]`);
  if (!err) return false;
  err.textContent = message || "";
  const control = err.parentElement.querySelector("input,select,textarea");
  if (control) control.setAttribute("aria-invalid", message ? "true" : "false");
  return true;
}

export function clearErrors(container) {
  for (const err of container.querySelectorAll("[data-error-for]")) err.textContent = "";
  for (const c of container.querySelectorAll("[aria-invalid]")) c.setAttribute("aria-invalid", "false");
}

export function notify(message, bad = false) {
  const box = document.getElementById("status");
  const item = h("div", { class: bad ? "bad" : "", text: message });
  box.append(item);
  setTimeout(() => item.remove(), bad ? 8000 : 3500);
}

// Run `fn` for a button: disabled and labelled as working meanwhile; the error is shown.
export async function act(button, label, fn) {
  const was = button.textContent;
  button.disabled = true;
  button.textContent = label + "…";
  try {
    const out = await fn();
    return out;
  } catch (e) {
    notify(`${was}: ${e.detail || e.message}`, true);
    return undefined;
  } finally {
    button.disabled = false;
    button.textContent = was;
  }
}

export function confirmAction(text) {
  const dlg = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  return new Promise((resolve) => {
    dlg.addEventListener("close", () => resolve(dlg.returnValue === "ok"), { once: true });
    dlg.showModal();
    document.getElementById("confirm-ok").focus();
  });
}

export function state(s) {
  return h("span", { class: "state " + s, text: s });
}

// A table whose rows can be replaced in place (live lists) and read as cards on a phone.
export function table(columns, rows, { empty = "Nothing here yet." } = {}) {
  if (!rows.length) return h("div", { class: "panel empty", text: empty });
  return h("div", { class: "table-wrap" },
    h("table", { class: "cards" },
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col", text: c.label })))),
      h("tbody", {}, rows.map((r) => h("tr", { "data-key": r.key || "" },
        columns.map((c) => h("td", { "data-label": c.label }, c.cell(r))))))));
}

export function replace(el, ...children) {
  el.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
}

export function mib(n) {
  return n >= 1024 && n % 1024 === 0 ? `${n / 1024} GiB` : `${n} MiB`;
}

export function when(iso) {
  return new Date(iso).toLocaleString();
}

export function download(filename, text) {
  const url = URL.createObjectURL(new Blob([text], { type: "application/octet-stream" }));
  const a = h("a", { href: url, download: filename });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

// Poll `fn` every `ms` while the page shows; returns the stop function.
export function poll(fn, ms) {
  let stopped = false;
  let timer = null;
  const tick = async () => {
    if (stopped) return;
    try { await fn(); } catch (e) { /* shown by fn; keep polling */ }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  tick();
  return () => { stopped = true; clearTimeout(timer); };
}
