// Create an instance, in the order the choices are made. Every change is checked by the API
// (POST /v1/instances/validate) and its message shown next to the field it is about.
import { ApiError, get, post } from "../api.js";
import { clearErrors, download, field, h, mib, notify, replace, setError } from "../ui.js";

// Which field an API error is about: by its code, or by the start of its message.
export function fieldOf(err) {
  const byCode = {
    invalid_name: "name", name_taken: "name", unknown_zone: "zone", insufficient_capacity: "zone", no_host_fits: "zone",
    unknown_arch: "arch", type_arch_mismatch: "size", unknown_type: "size", too_large: "size",
    unknown_image: "image", image_arch_mismatch: "image", unknown_keypair: "key",
    unknown_security_group: "groups", user_data_too_large: "user_data", invalid_user_data: "user_data",
    unknown_network: "network", invalid_tenancy: "tenancy", invalid_dedicated_host: "tenancy",
    unknown_dedicated_host: "tenancy", dedicated_host_released: "tenancy",
    dedicated_to_another_project: "tenancy",
  };
  if (err.code === "invalid_size") return /^bandwidth/.test(err.detail) ? "bandwidth" : "size";
  if (err.code === "invalid_input") {
    const m = /^(\w+)/.exec(err.detail || "");
    const key = m && m[1];
    if (["vcpus", "ram_mib", "type", "disk_gib"].includes(key)) return "size";
    if (["tenancy", "dedicated_host"].includes(key)) return "tenancy";
    if (["name", "zone", "arch", "image", "bandwidth_mbps", "user_data"].includes(key))
      return key === "bandwidth_mbps" ? "bandwidth" : key;
  }
  return byCode[err.code] || "form";
}

const radio = (name, value, checked, title, detail, disabled) => h("label", { class: "choice" },
  h("input", { type: "radio", name, value, checked, disabled }),
  h("span", {}, h("b", { text: title }), detail ? h("span", { class: "hint", text: detail }) : null));

function utf8Base64(text) {
  let bin = "";
  for (const b of new TextEncoder().encode(text)) bin += String.fromCharCode(b);
  return btoa(bin);
}

export async function render(root) {
  const [zones, types, images, keys, groups, prices, dedicated] = await Promise.all([
    get("/v1/zones"), get("/v1/instance-types"), get("/v1/images"), get("/v1/keypairs"),
    get("/v1/security-groups"), get("/v1/prices"), get("/v1/dedicated-hosts")]);
  const regions = [...new Set(zones.map((z) => z.region))];
  const form = h("form", { id: "create-form", novalidate: true });
  const sec = (n, title, ...body) => h("fieldset", { id: `step-${n}` },
    h("legend", {}, h("span", { class: "step", text: String(n) }), title), ...body);

  const region = h("select", { id: "region", name: "region" }, regions.map((r) => h("option", { value: r, text: r })));
  const zoneBox = h("div", { class: "choices", id: "zone-choices", role: "radiogroup", "aria-label": "Zone" });
  const tenancyBox = h("div", { class: "choices", id: "tenancy-choices", role: "radiogroup", "aria-label": "Tenancy" },
    radio("tenancy", "shared", true, "Shared", "hosts shared with other projects' VMs"),
    radio("tenancy", "dedicated", false, "Dedicated host", "a host reserved for this project: nothing of anyone else on it"));
  const dedicatedHost = h("select", { id: "dedicated-host", name: "dedicated_host" });
  const dedicatedRow = h("div", { class: "row", hidden: true }, field("Dedicated host", dedicatedHost, { name: "tenancy" }));
  const archBox = h("div", { class: "choices", id: "arch-choices", role: "radiogroup", "aria-label": "Architecture" });
  const sizeMode = h("div", { class: "choices", role: "radiogroup", "aria-label": "Size" },
    radio("size-mode", "type", true, "Instance type", "a fixed size"),
    radio("size-mode", "custom", false, "Custom", "your own vCores and RAM"));
  const type = h("select", { id: "type", name: "type" });
  const vcpus = h("input", { type: "number", id: "vcpus", min: "1", value: "1", inputmode: "numeric" });
  const ram = h("input", { type: "number", id: "ram", min: "64", step: "64", value: "256", inputmode: "numeric" });
  const custom = h("div", { class: "row", hidden: true }, field("vCores", vcpus), field("RAM (MiB)", ram));
  const price = h("output", { id: "price", for: "type vcpus ram", "aria-live": "polite" });
  const bandwidth = h("input", { type: "number", id: "bandwidth", min: "1", inputmode: "numeric", placeholder: "default" });
  const image = h("select", { id: "image", name: "image" });
  const key = h("select", { id: "key", name: "key" });
  const keyName = h("input", { id: "key-name", placeholder: "my-key" });
  const keyPub = h("textarea", { id: "key-public", placeholder: "ssh-ed25519 AAAA… (leave empty to create a new pair)" });
  const keyBtn = h("button", { type: "button", id: "key-add", text: "Import or create key" });
  const groupBox = h("div", { class: "choices", id: "group-choices" },
    groups.map((g) => h("label", { class: "choice" }, h("input", { type: "checkbox", name: "group",
      value: g.name, checked: g.name === "default" }), h("span", {}, h("b", { text: g.name }),
      h("span", { class: "hint", text: g.rules.map((r) => `${r.proto}${r.port ? "/" + r.port : ""}`).join(" ") || "no ingress" })))));
  const userData = h("textarea", { id: "user-data", placeholder: "#!/bin/sh\necho hello" });
  const name = h("input", { id: "name", name: "name", autocomplete: "off", placeholder: "web-1" });
  const submit = h("button", { type: "submit", class: "primary", id: "create-submit", text: "Create instance" });
  const formError = h("div", { class: "error", "data-error-for": "form", role: "alert" });

  const zone = () => zones.find((z) => z.name === (form.querySelector("input[name=zone]:checked") || {}).value);
  const arch = () => (form.querySelector("input[name=arch]:checked") || {}).value;
  const mode = () => form.querySelector("input[name=size-mode]:checked").value;
  const tenancy = () => form.querySelector("input[name=tenancy]:checked").value;

  function drawZones() {
    const here = zones.filter((z) => z.region === region.value);
    replace(zoneBox, here.map((z, i) => radio("zone", z.name, i === here.findIndex((x) => x.vcpus_free > 0) || (i === 0 && !here.some((x) => x.vcpus_free > 0)),
      z.name, z.hosts.length ? `${z.vcpus_free} vCPUs · ${mib(z.ram_mib_free)} free` : "no host", !z.hosts.length)));
    drawDedicated();
    drawArch();
  }
  // The project's dedicated hosts in the chosen zone: any of them (the scheduler picks), or one.
  function drawDedicated() {
    const z = zone();
    const here = dedicated.filter((d) => d.state === "available" && z && d.zone === z.name);
    const was = dedicatedHost.value;
    replace(dedicatedHost, h("option", { value: "", text: here.length ? `any of this project's (${here.length} in this zone)` : "none in this zone (an admin allocates them)" }),
      here.map((d) => h("option", { value: d.id, selected: d.id === was,
        text: d.capacity ? `${d.id} · ${d.capacity.vcpus_total - d.capacity.vcpus_used} of ${d.capacity.vcpus_total} vCPUs · ${mib(d.capacity.ram_mib_total - d.capacity.ram_mib_used)} free` : d.id })));
  }
  function drawArch() {
    const z = zone();
    const offered = new Set((z ? z.hosts : []).flatMap((x) => x.architectures));
    const was = arch() || "x86_64";
    replace(archBox, ["x86_64", "arm64"].map((a) => radio("arch", a, a === was && offered.has(a) ||
      (!offered.has(was) && a === [...offered][0]), a, offered.has(a) ? "" : "no host here", !offered.has(a))));
    drawArchDependent();
  }
  function drawArchDependent() {
    const a = arch();
    const z = zone();
    const largest = Math.max(0, ...(z ? z.hosts.filter((x) => x.architectures.includes(a)).map((x) => x.vcpus_allocatable - x.vcpus_used) : []));
    const largestRam = Math.max(0, ...(z ? z.hosts.filter((x) => x.architectures.includes(a)).map((x) => x.ram_mib_allocatable - x.ram_mib_used) : []));
    const wasType = type.value;
    // Bare-metal types (bm1.*) are created from the CLI or API: this form's network and
    // security-group choices are for VMs only, which a bare-metal create refuses.
    replace(type, types.filter((t) => t.architectures.includes(a) && !t.baremetal).map((t) => h("option", { value: t.name,
      selected: t.name === wasType, text: `${t.name} · ${t.vcpus} vCPU · ${mib(t.ram_mib)} · ${t.disk_gib} GiB · ${t.bandwidth_mbps} Mbit/s` })));
    vcpus.max = String(largest || 1);
    ram.max = String(largestRam || 64);
    custom.querySelector(".hint")?.remove();
    custom.append(h("div", { class: "hint", text: `This zone can hold up to ${largest} vCores and ${mib(largestRam)} now.` }));
    const wasImage = image.value;
    replace(image, images.filter((i) => i.architectures.includes(a)).map((i) => h("option", { value: i.name,
      selected: i.name === wasImage, text: `${i.name}${i.os ? " · " + i.os : ""} (user ${i.default_user})` })));
    if (!image.options.length) image.append(h("option", { value: "", text: `no image for ${a}` }));
    check();
  }
  function drawKeys(selected) {
    replace(key, h("option", { value: "", text: "no key" }), keys.map((k) => h("option", { value: k.name,
      text: `${k.name} · ${k.fingerprint}`, selected: k.name === selected })));
  }

  function body(forCheck) {
    const b = { name: name.value.trim() || (forCheck ? "name-to-check" : ""), image: image.value, arch: arch(),
      zone: zone() ? zone().name : null,
      keys: key.value ? [key.value] : [],
      security_groups: [...form.querySelectorAll("input[name=group]:checked")].map((c) => c.value) };
    if (tenancy() === "dedicated") {
      if (dedicatedHost.value) b.dedicated_host = dedicatedHost.value;
      else b.tenancy = "dedicated";
    }
    if (mode() === "type") b.type = type.value;
    else { b.vcpus = Number(vcpus.value); b.ram_mib = Number(ram.value); }
    if (bandwidth.value !== "") b.bandwidth_mbps = Number(bandwidth.value);
    if (userData.value) b.user_data = utf8Base64(userData.value);
    return b;
  }
  function showError(e) {
    let where = fieldOf(e);
    if (where === "size" && mode() === "custom") where = "size-custom";
    if (!setError(form, where, e.detail)) setError(form, "form", e.detail);
    return where;
  }
  // The hourly price of the choice, from the API's price list (exact decimal text; a custom
  // size's sum is rounded for display only: usage is computed by the API).
  function drawPrice() {
    const find = (pred) => prices.find((p) => p.kind === "instance" && pred(p));
    let perHour = null;
    let disk = "";
    if (mode() === "type") {
      const t = types.find((x) => x.name === type.value);
      const p = find((x) => x.name === type.value);
      const d = prices.find((x) => x.kind === "boot_disk");
      if (p) perHour = p.price;
      if (t && d) disk = ` · boot disk ${t.disk_gib} GiB at ${d.price} ${d.currency} per GiB-month`;
    } else {
      const cpu = find((x) => x.unit === "vCPU-hour");
      const mem = find((x) => x.unit === "GiB-hour");
      if (cpu && mem) perHour = String(Number((Number(vcpus.value) * Number(cpu.price) + Number(ram.value) / 1024 * Number(mem.price)).toFixed(6)));
    }
    const currency = prices.length ? prices[0].currency : "";
    const host = prices.find((x) => x.kind === "dedicated_host");
    const own = tenancy() === "dedicated" && host ? ` · the dedicated host itself: ${host.price} ${currency} per hour while allocated` : "";
    price.textContent = perHour === null ? "" : `${perHour} ${currency} per hour while running${disk}${own}`;
  }
  let checking = 0;
  let timer = null;
  function check() {
    drawPrice();
    clearTimeout(timer);
    timer = setTimeout(async () => {
      const mine = ++checking;
      const b = body(true);
      let err = null;
      try { await post("/v1/instances/validate", b); } catch (e) { err = e; }
      if (mine !== checking) return;
      clearErrors(form);
      if (err instanceof ApiError && !(fieldOf(err) === "name" && !name.value.trim())) showError(err);
    }, 300);
  }

  keyBtn.addEventListener("click", async () => {
    setError(form, "key", "");
    const pub = keyPub.value.trim();
    keyBtn.disabled = true;
    try {
      const made = await post("/v1/keypairs", { name: keyName.value.trim(), ...(pub ? { public_key: pub } : {}) });
      keys.push(made);
      drawKeys(made.name);
      if (made.private_key) {
        download(`${made.name}.pem`, made.private_key);
        notify(`Key pair ${made.name} created: its private key was downloaded (it is not kept anywhere).`);
      } else {
        notify(`Key pair ${made.name} imported.`);
      }
      keyName.value = ""; keyPub.value = "";
      check();
    } catch (e) {
      setError(form, "key", e.detail || e.message);
    } finally {
      keyBtn.disabled = false;
    }
  });
  region.addEventListener("change", drawZones);
  zoneBox.addEventListener("change", () => { drawDedicated(); drawArch(); });
  tenancyBox.addEventListener("change", () => { dedicatedRow.hidden = tenancy() !== "dedicated"; check(); });
  archBox.addEventListener("change", drawArchDependent);
  sizeMode.addEventListener("change", () => {
    const c = mode() === "custom";
    custom.hidden = !c; type.parentElement.hidden = c; check();
  });
  form.addEventListener("input", (ev) => { if (!ev.target.closest("#key-import")) check(); });
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearErrors(form);
    if (!name.value.trim()) { setError(form, "name", "give the instance a name"); name.focus(); return; }
    submit.disabled = true; submit.textContent = "Creating…";
    try {
      const made = await post("/v1/instances", body(false));
      notify(`${made.name}: created, ${made.state}`);
      location.hash = `#/instances/${encodeURIComponent(made.name)}`;
    } catch (e) {
      const where = showError(e);
      const c = form.querySelector(`[data-error-for="${where}"]`)?.parentElement?.querySelector("input,select,textarea");
      if (c) c.focus();
    } finally {
      submit.disabled = false; submit.textContent = "Create instance";
    }
  });

  const zoneField = h("div", { class: "field" }, h("span", { class: "hint", text: "Zone (free capacity now)" }), zoneBox,
    h("div", { class: "error", "data-error-for": "zone" }));
  replace(form,
    sec(1, "Datacenter", h("div", { class: "row" }, field("Region", region)), zoneField,
      h("div", { class: "field" }, h("span", { class: "hint", text: "Tenancy" }), tenancyBox), dedicatedRow),
    sec(2, "Architecture", archBox, h("div", { class: "error", "data-error-for": "arch" })),
    sec(3, "Size", sizeMode, h("div", { class: "row" }, field("Instance type", type, { name: "size" })), custom,
      h("div", { class: "hint" }, "Price: ", price)),
    sec(4, "Bandwidth", field("Bandwidth cap (Mbit/s)", bandwidth, { name: "bandwidth", hint: "Empty: the type's cap (custom sizes: the default)." })),
    sec(5, "Operating system", field("Image", image, { name: "image", hint: "Images of the chosen architecture." })),
    sec(6, "SSH key", field("Key pair", key, { name: "key" }),
      h("details", { id: "key-import" }, h("summary", { text: "Import a public key or create a new pair" }),
        h("div", { class: "inline-form" }, field("Name", keyName), field("Public key (optional)", keyPub)), keyBtn,
        h("p", { class: "hint", text: "A created pair's private key is offered once, as a download; cumulo does not keep it." }))),
    sec(7, "Security groups", groupBox, h("div", { class: "error", "data-error-for": "groups" })),
    sec(8, "User-data (optional)", field("Script or #cloud-config", userData, { name: "user_data" })),
    sec(9, "Name", field("Instance name", name, { name: "name", hint: "A DNS label: letters, digits and dashes." })),
    formError, h("div", { class: "row" }, submit));
  // Custom sizes report their errors on the same line as types do.
  custom.append(h("div", { class: "error", "data-error-for": "size-custom" }));
  drawKeys("");
  drawZones();
  replace(root, h("h1", { text: "Create an instance" }), form);
  return () => clearTimeout(timer);
}
