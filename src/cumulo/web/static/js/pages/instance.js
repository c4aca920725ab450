// One instance: its facts (live), actions, volumes, console log and serial console.
import { del, get, post } from "../api.js";
import { act, confirmAction, h, mib, notify, poll, replace, state, table, when } from "../ui.js";
import { openSerial } from "../serial.js";
import { POLL_MS } from "./instances.js";

export function render(root, [ref]) {
  const title = h("h1", {}, ref);
  const actions = h("div", { class: "row", role: "group", "aria-label": "Actions" });
  const facts = h("dl", { class: "facts", id: "facts" });
  const vols = h("div", { id: "instance-volumes" });
  const log = h("pre", { class: "log", id: "console-log", tabindex: "0", "aria-label": "Console log" });
  const termBox = h("div", { class: "term", id: "serial", hidden: true });
  const serialState = h("span", { class: "muted", id: "serial-state", role: "status" });
  const serialBtn = h("button", { type: "button", id: "serial-toggle", text: "Open serial console" });
  let inst = null;
  let closeSerial = null;
  let gone = false;

  const button = (label, busy, fn, cls) => h("button", { type: "button", class: cls, text: label,
    onclick: (ev) => act(ev.currentTarget, busy, fn) });
  const lifecycle = (verb, busy) => button(verb[0].toUpperCase() + verb.slice(1), busy, async () => {
    await post(`/v1/instances/${encodeURIComponent(inst.id)}/${verb}`);
    notify(`${inst.name}: ${busy.toLowerCase()}`);
    await refresh();
  });
  const remove = button("Delete", "Deleting", async () => {
    if (!(await confirmAction(`Delete instance ${inst.name}? Its boot disk is deleted too.`))) return;
    await del(`/v1/instances/${encodeURIComponent(inst.id)}`);
    notify(`${inst.name}: deleting`);
    await refresh();
  }, "danger");
  replace(actions, lifecycle("start", "Starting"), lifecycle("stop", "Stopping"),
    lifecycle("reboot", "Rebooting"), remove);
  // Usable once the instance is known (a click before would act on nothing).
  const ready = (on) => { for (const b of actions.querySelectorAll("button")) b.disabled = !on; };
  ready(false);
  serialBtn.disabled = true;

  const loadLog = async () => {
    try {
      log.textContent = (await get(`/v1/instances/${encodeURIComponent(ref)}/console`)) || "(empty)";
      log.scrollTop = log.scrollHeight;
    } catch (e) {
      log.textContent = `(${e.detail || e.message})`;
    }
  };
  serialBtn.addEventListener("click", () => {
    if (closeSerial) {
      closeSerial(); closeSerial = null;
      termBox.hidden = true; serialBtn.textContent = "Open serial console"; serialState.textContent = "";
      return;
    }
    termBox.hidden = false;
    serialBtn.textContent = "Close serial console";
    closeSerial = openSerial(termBox, inst ? inst.id : ref, (text, bad) => {
      serialState.textContent = text;
      serialState.style.color = bad ? "var(--danger)" : "";
    });
  });

  const refresh = async () => {
    try {
      inst = await get(`/v1/instances/${encodeURIComponent(ref)}`);
    } catch (e) {
      if (e.status === 404) {
        gone = true;
        replace(facts, h("dd", { text: "This instance no longer exists." }));
        ready(false);
        return;
      }
      throw e;
    }
    if (!title.querySelector(".state")) { ready(true); serialBtn.disabled = false; }
    replace(title, inst.name, state(inst.state));
    const rows = [
      ["ID", inst.id], ["State", `${inst.state} (wanted: ${inst.desired_state})${inst.state_reason ? " – " + inst.state_reason : ""}`],
      ["FQDN", inst.fqdn], ["Private IP", inst.private_ip || "–"], ["Public IP", inst.public_ip || "–"],
      ["Region / zone", `${inst.region} / ${inst.zone}`], ["Host", inst.host || "–"],
      ["Tenancy", inst.tenancy === "dedicated" ? `dedicated host ${inst.dedicated_host || ""}` : "shared"],
      ["Architecture", inst.arch], ["Type", inst.type || "custom"],
      ["Size", `${inst.vcpus} vCPU · ${mib(inst.ram_mib)} · ${inst.disk_gib} GiB disk`],
      ["Bandwidth", `${inst.bandwidth_mbps} Mbit/s`], ["Image", inst.image], ["Network", inst.network || "–"],
      ["Key pairs", inst.key_names.join(", ") || "–"], ["Security groups", inst.security_groups.join(", ") || "–"],
      ["Tags", Object.entries(inst.tags).map(([k, v]) => `${k}=${v}`).join(", ") || "–"],
      ["Created", when(inst.created_at)],
    ];
    replace(facts, rows.flatMap(([k, v]) => [h("dt", { text: k }), h("dd", { text: v })]));
    const attached = (await get("/v1/volumes")).filter((v) => v.attached_to === inst.name);
    replace(vols, table([
      { label: "Volume", cell: (v) => v.name },
      { label: "State", cell: (v) => state(v.state) },
      { label: "Size", cell: (v) => `${v.size_gib} GiB` },
      { label: "Device", cell: (v) => v.device || "–" },
    ], attached, { empty: "No volume attached (see Volumes)." }));
  };

  replace(root, title, actions,
    h("div", { class: "grid2" },
      h("section", { class: "panel", "aria-labelledby": "facts-h" }, h("h2", { id: "facts-h", text: "Facts" }), facts),
      h("section", { class: "panel", "aria-labelledby": "vols-h" }, h("h2", { id: "vols-h", text: "Volumes" }), vols)),
    h("section", { class: "panel", "aria-labelledby": "serial-h" },
      h("h2", { id: "serial-h", text: "Serial console" }),
      h("div", { class: "row" }, serialBtn, serialState), termBox),
    h("section", { class: "panel", "aria-labelledby": "log-h" },
      h("h2", { id: "log-h" }, "Console log ", h("button", { type: "button", text: "Refresh", onclick: loadLog })),
      log));
  loadLog();
  const stop = poll(async () => {
    if (gone) return;
    try { await refresh(); } catch (e) { notify(`${ref}: ${e.detail || e.message}`, true); }
  }, POLL_MS);
  return () => { stop(); if (closeSerial) closeSerial(); };
}
