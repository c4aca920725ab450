// Instances: a live list (polled every 1.5 s, updated in place) with filters.
import { get } from "../api.js";
import { field, h, mib, notify, poll, replace, state, table } from "../ui.js";

export const POLL_MS = 1500;
const STATES = ["", "pending", "starting", "running", "stopping", "stopped", "rebooting", "error", "deleting"];

export function render(root) {
  const text = h("input", { type: "search", id: "filter-text", placeholder: "name, IP, zone…" });
  const st = h("select", { id: "filter-state" }, STATES.map((s) => h("option", { value: s, text: s || "any state" })));
  const list = h("div", { id: "instance-list", "aria-live": "off" });
  let rows = [];
  let shown = "";
  let failed = false;
  const draw = () => {
    const q = text.value.trim().toLowerCase();
    const picked = rows.filter((i) => (!st.value || i.state === st.value) && (!q ||
      [i.name, i.zone, i.private_ip, i.public_ip, i.image, i.id].some((v) => v && v.toLowerCase().includes(q))));
    const key = JSON.stringify([picked, q, st.value]);
    if (key === shown) return;
    shown = key;
    replace(list, table([
      { label: "Name", cell: (i) => h("a", { href: `#/instances/${encodeURIComponent(i.name)}`, text: i.name }) },
      { label: "State", cell: (i) => state(i.state) },
      { label: "Zone", cell: (i) => i.zone },
      { label: "Arch", cell: (i) => i.arch },
      { label: "Size", cell: (i) => `${i.type || "custom"} · ${i.vcpus} vCPU · ${mib(i.ram_mib)}` },
      { label: "Image", cell: (i) => i.image },
      { label: "Private IP", cell: (i) => i.private_ip || "–" },
      { label: "Public IP", cell: (i) => i.public_ip || "–" },
    ], picked.map((i) => ({ ...i, key: i.id })), {
      empty: rows.length ? "No instance matches the filters." : "No instances yet: create one.",
    }));
  };
  text.addEventListener("input", draw);
  st.addEventListener("change", draw);
  replace(root,
    h("h1", {}, "Instances", h("a", { class: "button primary", href: "#/create", text: "Create instance" })),
    h("div", { class: "row panel" }, field("Filter", text), field("State", st)),
    list);
  return poll(async () => {
    try {
      rows = await get("/v1/instances");
      failed = false;
      draw();
    } catch (e) {
      if (!failed) notify(`Instances: ${e.detail || e.message}`, true);
      failed = true;
    }
  }, POLL_MS);
}
