// For admins: zones and their hosts with capacity, projects and their tokens.
import { del, get, post } from "../api.js";
import { confirmAction, h, mib, notify, replace, state, table, when } from "../ui.js";
import { createForm, liveTable, rowAction } from "./resource.js";

export const zones = {
  async render(root) {
    const list = h("div", { id: "zone-list" });
    const live = liveTable(list, {
      load: () => get("/v1/zones"), empty: "No zones.", ms: 2000,
      columns: [
        { label: "Zone", cell: (z) => h("span", {}, h("b", { text: z.name }), h("div", { class: "hint", text: `region ${z.region}` })) },
        { label: "Free", cell: (z) => `${z.vcpus_free} vCPUs · ${mib(z.ram_mib_free)}` },
        { label: "Hosts", cell: (z) => table([
          { label: "Host", cell: (x) => x.name },
          { label: "State", cell: (x) => state(x.state) },
          { label: "Architectures", cell: (x) => x.architectures.join(", ") },
          { label: "vCPUs used", cell: (x) => `${x.vcpus_used} / ${x.vcpus_allocatable}` },
          { label: "RAM used", cell: (x) => `${mib(x.ram_mib_used)} / ${mib(x.ram_mib_allocatable)}` },
          { label: "Instances", cell: (x) => String(x.instances) },
          { label: "Driver", cell: (x) => `${x.driver} (${x.accel})` },
          { label: "Last seen", cell: (x) => when(x.last_heartbeat_at) },
        ], z.hosts, { empty: "No host in this zone." }) },
      ],
    });
    replace(root, h("h1", { text: "Zones & hosts" }), list);
    return live.stop;
  },
};

export const projects = {
  async render(root) {
    const list = h("div", { id: "project-list" });
    const live = liveTable(list, {
      load: () => get("/v1/projects", { raw: true }), empty: "No projects.", ms: 5000,
      columns: [
        { label: "Name", cell: (p) => p.name },
        { label: "Created", cell: (p) => when(p.created_at) },
        { label: "Actions", cell: (p) => h("div", { class: "row" },
          rowAction("New token", "Issuing", async () => {
            const t = await post(`/v1/projects/${encodeURIComponent(p.name)}/tokens`, undefined, { raw: true });
            await confirmAction(`Token for project ${p.name} (shown once): ${t.token}`);
          }),
          rowAction("Delete", "Deleting", async () => {
            if (!(await confirmAction(`Delete project ${p.name}?`))) return;
            await del(`/v1/projects/${encodeURIComponent(p.name)}`, { raw: true }); notify(`${p.name}: deleted`); live.refresh();
          }, "danger")) },
      ],
    });
    const form = createForm({
      id: "project-create", label: "Create project",
      inputs: [{ name: "name", label: "Name", el: h("input", { id: "project-name" }) }],
      errorField: (e) => (["invalid_name", "name_taken", "conflict"].includes(e.code) ? "name" : null),
      submit: async (v) => { await post("/v1/projects", v, { raw: true }); notify(`${v.name}: created`); live.refresh(); },
    });
    replace(root, h("h1", { text: "Projects" }), form, list);
    return live.stop;
  },
};
