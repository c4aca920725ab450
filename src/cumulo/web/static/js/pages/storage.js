// Volumes and snapshots.
import { del, get, post } from "../api.js";
import { confirmAction, h, notify, replace, state, when } from "../ui.js";
import { createForm, liveTable, rowAction } from "./resource.js";

const enc = encodeURIComponent;

export const volumes = {
  async render(root) {
    const [zones, instances, snaps] = await Promise.all([get("/v1/zones"), get("/v1/instances"),
      get("/v1/snapshots")]);
    let names = instances.map((i) => i.name);
    const zone = h("select", { id: "volume-zone" }, zones.map((z) => h("option", { value: z.name, text: z.name })));
    const list = h("div", { id: "volume-list" });
    const pickInstance = () => h("select", { "aria-label": "Instance" }, names.map((n) => h("option", { value: n, text: n })));
    const live = liveTable(list, {
      load: () => get("/v1/volumes"),
      onData: () => get("/v1/instances").then((l) => { names = l.map((i) => i.name); }).catch(() => {}),
      empty: "No volumes yet.",
      columns: [
        { label: "Name", cell: (v) => v.name },
        { label: "State", cell: (v) => h("span", {}, state(v.state), v.state_reason ? h("div", { class: "hint", text: v.state_reason }) : null) },
        { label: "Size", cell: (v) => `${v.size_gib} GiB` },
        { label: "Zone", cell: (v) => v.zone },
        { label: "Attached to", cell: (v) => v.attached_to ? `${v.attached_to} (${v.device || "?"})` : "–" },
        { label: "Actions", cell: (v) => {
          const box = h("div", { class: "row" });
          if (v.attached_to) {
            box.append(rowAction("Detach", "Detaching", async () => {
              await post(`/v1/volumes/${enc(v.id)}/detach`); notify(`${v.name}: detaching`); live.refresh();
            }));
          } else {
            const sel = pickInstance();
            box.append(sel, rowAction("Attach", "Attaching", async () => {
              await post(`/v1/volumes/${enc(v.id)}/attach`, { instance: sel.value });
              notify(`${v.name}: attaching to ${sel.value}`); live.refresh();
            }));
          }
          const size = h("input", { type: "number", min: String(v.size_gib + 1), value: String(v.size_gib + 1),
            "aria-label": `New size of ${v.name} (GiB)`, style: "width:5em" });
          box.append(size, rowAction("Resize", "Resizing", async () => {
            await post(`/v1/volumes/${enc(v.id)}/resize`, { size_gib: Number(size.value) });
            notify(`${v.name}: resizing`); live.refresh();
          }));
          const snap = h("input", { "aria-label": `Snapshot name for ${v.name}`, placeholder: "snapshot name", style: "width:9em" });
          box.append(snap, rowAction("Snapshot", "Snapshotting", async () => {
            await post(`/v1/volumes/${enc(v.id)}/snapshots`, { name: snap.value.trim() });
            notify(`${v.name}: snapshot ${snap.value.trim()} started`);
          }));
          box.append(rowAction("Delete", "Deleting", async () => {
            if (!(await confirmAction(`Delete volume ${v.name} and its data?`))) return;
            await del(`/v1/volumes/${enc(v.id)}`); notify(`${v.name}: deleting`); live.refresh();
          }, "danger"));
          return box;
        } },
      ],
    });
    const form = createForm({
      id: "volume-create", label: "Create volume",
      inputs: [
        { name: "name", label: "Name", el: h("input", { id: "volume-name", placeholder: "data" }) },
        { name: "size_gib", label: "Size (GiB)", el: h("input", { id: "volume-size", type: "number", min: "1", value: "1" }) },
        { name: "zone", label: "Zone", el: zone },
        { name: "from_snapshot", label: "From snapshot", el: h("select", { id: "volume-snapshot" },
          h("option", { value: "", text: "empty volume" }),
          snaps.filter((x) => x.state === "available").map((x) => h("option", { value: x.name, text: `${x.name} (${x.size_gib} GiB)` }))) },
      ],
      errorField: (e) => (e.code === "invalid_name" || e.code === "name_taken" ? "name" : e.code === "invalid_size" ? "size_gib" : e.code === "unknown_zone" ? "zone" : /snapshot/.test(e.code) ? "from_snapshot" : null),
      submit: async (v) => {
        await post("/v1/volumes", { name: v.name, size_gib: Number(v.size_gib), zone: v.zone,
          ...(v.from_snapshot ? { from_snapshot: v.from_snapshot } : {}) });
        notify(`${v.name}: creating`); live.refresh();
      },
    });
    replace(root, h("h1", { text: "Volumes" }), form, list);
    return live.stop;
  },
};

export const snapshots = {
  async render(root) {
    const list = h("div", { id: "snapshot-list" });
    const live = liveTable(list, {
      load: () => get("/v1/snapshots"), empty: "No snapshots yet (take one from a volume).",
      columns: [
        { label: "Name", cell: (s) => s.name },
        { label: "State", cell: (s) => state(s.state) },
        { label: "Volume", cell: (s) => s.volume || "(deleted)" },
        { label: "Size", cell: (s) => `${s.size_gib} GiB` },
        { label: "Created", cell: (s) => when(s.created_at) },
        { label: "Actions", cell: (s) => rowAction("Delete", "Deleting", async () => {
          if (!(await confirmAction(`Delete snapshot ${s.name}?`))) return;
          await del(`/v1/snapshots/${enc(s.id)}`); notify(`${s.name}: deleted`); live.refresh();
        }, "danger") },
      ],
    });
    replace(root, h("h1", { text: "Snapshots" }),
      h("p", { class: "muted", text: "Take one from a volume; make a volume from one on the Volumes page." }), list);
    return live.stop;
  },
};
