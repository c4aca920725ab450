// Key pairs and images.
import { del, get, post } from "../api.js";
import { confirmAction, download, h, notify, replace, when } from "../ui.js";
import { createForm, liveTable, rowAction } from "./resource.js";

const enc = encodeURIComponent;

export const keys = {
  async render(root) {
    const list = h("div", { id: "key-list" });
    const live = liveTable(list, {
      load: () => get("/v1/keypairs"), empty: "No key pairs yet.", ms: 5000,
      columns: [
        { label: "Name", cell: (k) => k.name },
        { label: "Fingerprint", cell: (k) => h("span", { class: "mono", text: k.fingerprint }) },
        { label: "Created", cell: (k) => when(k.created_at) },
        { label: "Actions", cell: (k) => rowAction("Delete", "Deleting", async () => {
          if (!(await confirmAction(`Delete key pair ${k.name}?`))) return;
          await del(`/v1/keypairs/${enc(k.name)}`); notify(`${k.name}: deleted`); live.refresh();
        }, "danger") },
      ],
    });
    const form = createForm({
      id: "key-create", label: "Import or create",
      inputs: [
        { name: "name", label: "Name", el: h("input", { id: "keypair-name", placeholder: "laptop" }) },
        { name: "public_key", label: "Public key (empty: create a new pair)", el: h("textarea", { id: "keypair-public" }) },
      ],
      errorField: (e) => (["invalid_name", "name_taken"].includes(e.code) ? "name" : e.code === "invalid_key" ? "public_key" : null),
      submit: async (v) => {
        const made = await post("/v1/keypairs", { name: v.name, ...(v.public_key ? { public_key: v.public_key } : {}) });
        if (made.private_key) {
          download(`${made.name}.pem`, made.private_key);
          notify(`${made.name}: created; its private key was downloaded (offered once, not kept)`);
        } else notify(`${made.name}: imported`);
        live.refresh();
      },
    });
    replace(root, h("h1", { text: "Key pairs" }), form, list);
    return live.stop;
  },
};

export const images = {
  async render(root) {
    const list = h("div", { id: "image-list" });
    const live = liveTable(list, {
      load: () => get("/v1/images"), empty: "No images.", ms: 5000,
      columns: [
        { label: "Name", cell: (i) => i.name },
        { label: "OS", cell: (i) => i.os || "–" },
        { label: "Architectures", cell: (i) => i.architectures.join(", ") },
        { label: "User", cell: (i) => i.default_user },
        { label: "Visibility", cell: (i) => (i.project ? `project ${i.project}` : "public") },
        { label: "Actions", cell: (i) => rowAction("Delete", "Deleting", async () => {
          if (!(await confirmAction(`Delete image ${i.name}?`))) return;
          await del(`/v1/images/${enc(i.name)}${i.project ? "" : "?public=true"}`); notify(`${i.name}: deleted`); live.refresh();
        }, "danger") },
      ],
    });
    const fromUrl = createForm({
      id: "image-import", label: "Import from URL",
      inputs: [
        { name: "name", label: "Name", el: h("input", { id: "image-name" }) },
        { name: "url", label: "URL (qcow2 or raw)", el: h("input", { id: "image-url", type: "url", placeholder: "https://…" }) },
        { name: "arch", label: "Architecture", el: h("select", { id: "image-arch" }, ["x86_64", "arm64"].map((a) => h("option", { value: a, text: a }))) },
        { name: "default_user", label: "Default user", el: h("input", { id: "image-user", value: "root" }) },
      ],
      errorField: (e) => (/url|download/.test(e.code) ? "url" : ["invalid_name", "name_taken"].includes(e.code) ? "name" : null),
      submit: async (v) => { await post("/v1/images", v); notify(`${v.name}: imported`); live.refresh(); },
    });
    const fromInstance = createForm({
      id: "image-from-instance", label: "Create from instance",
      inputs: [
        { name: "name", label: "Name", el: h("input", { id: "image-from-name" }) },
        { name: "instance", label: "Stopped instance", el: h("input", { id: "image-from-instance-name" }) },
      ],
      errorField: (e) => (["invalid_name", "name_taken"].includes(e.code) ? "name" : /instance|state/.test(e.code) ? "instance" : null),
      submit: async (v) => { await post("/v1/images/from-instance", v); notify(`${v.name}: created`); live.refresh(); },
    });
    replace(root, h("h1", { text: "Images" }), list, h("h2", { text: "Import" }), fromUrl, fromInstance);
    return live.stop;
  },
};
