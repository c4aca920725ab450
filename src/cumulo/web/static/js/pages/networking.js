// Public IPs, security groups and their rules, private networks.
import { del, get, post } from "../api.js";
import { confirmAction, h, notify, replace, when } from "../ui.js";
import { createForm, liveTable, rowAction } from "./resource.js";

const enc = encodeURIComponent;

export const ips = {
  async render(root) {
    let names = (await get("/v1/instances")).map((i) => i.name);
    const list = h("div", { id: "ip-list" });
    const allocate = h("button", { type: "button", class: "primary", id: "ip-allocate", text: "Allocate a public IP" });
    const live = liveTable(list, {
      load: () => get("/v1/public-ips"), empty: "No public IPs.",
      onData: () => get("/v1/instances").then((l) => { names = l.map((i) => i.name); }).catch(() => {}),
      columns: [
        { label: "Address", cell: (a) => h("span", { class: "mono", text: a.ip }) },
        { label: "Instance", cell: (a) => a.instance || "–" },
        { label: "Kind", cell: (a) => (a.auto ? "automatic (with its instance)" : "allocated") },
        { label: "Actions", cell: (a) => {
          const box = h("div", { class: "row" });
          if (a.instance) {
            box.append(rowAction("Detach", "Detaching", async () => {
              await post(`/v1/public-ips/${enc(a.ip)}/detach`); notify(`${a.ip}: detached`); live.refresh();
            }));
          } else {
            const sel = h("select", { "aria-label": `Instance for ${a.ip}` }, names.map((n) => h("option", { value: n, text: n })));
            box.append(sel, rowAction("Attach", "Attaching", async () => {
              await post(`/v1/public-ips/${enc(a.ip)}/attach`, { instance: sel.value });
              notify(`${a.ip}: attached to ${sel.value}`); live.refresh();
            }));
          }
          if (!a.auto) {
            box.append(rowAction("Release", "Releasing", async () => {
              if (!(await confirmAction(`Release ${a.ip}?`))) return;
              await del(`/v1/public-ips/${enc(a.ip)}`); notify(`${a.ip}: released`); live.refresh();
            }, "danger"));
          }
          return box;
        } },
      ],
    });
    allocate.addEventListener("click", async () => {
      allocate.disabled = true;
      try {
        const a = await post("/v1/public-ips");
        notify(`allocated ${a.ip}`); live.refresh();
      } catch (e) { notify(`Allocate: ${e.detail}`, true); } finally { allocate.disabled = false; }
    });
    replace(root, h("h1", {}, "Public IPs", allocate), list);
    return live.stop;
  },
};

export const groups = {
  async render(root) {
    const list = h("div", { id: "group-list" });
    const ruleForm = (g) => {
      const proto = h("select", { "aria-label": "Protocol" }, ["tcp", "udp", "icmp"].map((p) => h("option", { value: p, text: p })));
      const port = h("input", { type: "number", min: "1", max: "65535", placeholder: "port", "aria-label": "Port", style: "width:6em" });
      const cidr = h("input", { value: "0.0.0.0/0", "aria-label": "Source CIDR", style: "width:10em" });
      return h("div", { class: "row" }, proto, port, cidr, rowAction("Add rule", "Adding", async () => {
        await post(`/v1/security-groups/${enc(g.name)}/rules`, {
          proto: proto.value, cidr: cidr.value.trim(), ...(port.value ? { port: Number(port.value) } : {}) });
        notify(`${g.name}: rule added`); live.refresh();
      }));
    };
    const live = liveTable(list, {
      load: () => get("/v1/security-groups"), empty: "No security groups.",
      columns: [
        { label: "Name", cell: (g) => h("span", {}, h("b", { text: g.name }), h("div", { class: "hint", text: g.description })) },
        { label: "Instances", cell: (g) => String(g.instances) },
        { label: "Ingress rules", cell: (g) => h("div", {},
          g.rules.map((r) => h("div", { class: "row" }, h("span", { class: "mono", text: `${r.proto} ${r.port ?? "any"} from ${r.cidr}` }),
            rowAction("Remove", "Removing", async () => {
              await del(`/v1/security-groups/${enc(g.name)}/rules/${enc(r.id)}`); notify(`${g.name}: rule removed`); live.refresh();
            }))), ruleForm(g)) },
        { label: "Actions", cell: (g) => rowAction("Delete", "Deleting", async () => {
          if (!(await confirmAction(`Delete security group ${g.name}?`))) return;
          await del(`/v1/security-groups/${enc(g.name)}`); notify(`${g.name}: deleted`); live.refresh();
        }, "danger") },
      ],
    });
    const form = createForm({
      id: "group-create", label: "Create group",
      inputs: [
        { name: "name", label: "Name", el: h("input", { id: "group-name", placeholder: "web" }) },
        { name: "description", label: "Description", el: h("input", { id: "group-description" }) },
      ],
      errorField: (e) => (["invalid_name", "name_taken"].includes(e.code) ? "name" : null),
      submit: async (v) => { await post("/v1/security-groups", v); notify(`${v.name}: created`); live.refresh(); },
    });
    replace(root, h("h1", { text: "Security groups" }),
      h("p", { class: "muted", text: "Stateful ingress firewall; egress is always allowed. Rules apply within 2 s." }), form, list);
    return live.stop;
  },
};

export const networks = {
  async render(root) {
    const zones = await get("/v1/zones");
    const list = h("div", { id: "network-list" });
    const live = liveTable(list, {
      load: () => get("/v1/networks"), empty: "No networks yet (each zone's default one is made with the first instance).",
      columns: [
        { label: "Name", cell: (n) => n.name + (n.is_default ? " (default)" : "") },
        { label: "Zone", cell: (n) => n.zone },
        { label: "CIDR", cell: (n) => h("span", { class: "mono", text: n.cidr }) },
        { label: "Gateway", cell: (n) => h("span", { class: "mono", text: n.gateway }) },
        { label: "Instances", cell: (n) => String(n.instances) },
        { label: "Created", cell: (n) => when(n.created_at) },
        { label: "Actions", cell: (n) => rowAction("Delete", "Deleting", async () => {
          if (!(await confirmAction(`Delete network ${n.name}?`))) return;
          await del(`/v1/networks/${enc(n.name)}?zone=${enc(n.zone)}`); notify(`${n.name}: deleted`); live.refresh();
        }, "danger") },
      ],
    });
    const form = createForm({
      id: "network-create", label: "Create network",
      inputs: [
        { name: "name", label: "Name", el: h("input", { id: "network-name", placeholder: "backend" }) },
        { name: "cidr", label: "CIDR", el: h("input", { id: "network-cidr", placeholder: "10.100.0.0/24" }) },
        { name: "zone", label: "Zone", el: h("select", { id: "network-zone" }, zones.map((z) => h("option", { value: z.name, text: z.name }))) },
      ],
      errorField: (e) => (["invalid_name", "name_taken"].includes(e.code) ? "name" : /cidr|ip/.test(e.code) ? "cidr" : e.code === "unknown_zone" ? "zone" : null),
      submit: async (v) => { await post("/v1/networks", v); notify(`${v.name}: created`); live.refresh(); },
    });
    replace(root, h("h1", { text: "Networks" }), form, list);
    return live.stop;
  },
};
