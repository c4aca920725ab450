// The console's shell: sign-in, navigation (hash routes, no reload), the admin's project.
import { ApiError, get, session } from "./api.js";
import { field, h, replace, setError } from "./ui.js";
import * as instances from "./pages/instances.js";
import * as instance from "./pages/instance.js";
import * as create from "./pages/create.js";
import * as storage from "./pages/storage.js";
import * as networking from "./pages/networking.js";
import * as catalogue from "./pages/catalogue.js";
import * as admin from "./pages/admin.js";

const PAGES = [
  { path: "instances", label: "Instances", page: instances },
  { path: "create", label: "Create instance", page: create },
  { path: "volumes", label: "Volumes", page: storage.volumes },
  { path: "snapshots", label: "Snapshots", page: storage.snapshots },
  { path: "ips", label: "Public IPs", page: networking.ips },
  { path: "security-groups", label: "Security groups", page: networking.groups },
  { path: "networks", label: "Networks", page: networking.networks },
  { path: "keys", label: "Key pairs", page: catalogue.keys },
  { path: "images", label: "Images", page: catalogue.images },
  { path: "zones", label: "Zones & hosts", page: admin.zones, admin: true },
  { path: "projects", label: "Projects", page: admin.projects, admin: true },
];

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const who = document.getElementById("who");
const menu = document.querySelector(".menu-toggle");
let leave = null; // the current page's clean-up (timers, sockets)

function route() {
  const [path, ...rest] = location.hash.replace(/^#\/?/, "").split("/");
  return { path: path || "instances", rest: rest.map(decodeURIComponent) };
}

async function show() {
  if (leave) { leave(); leave = null; }
  if (!session.token() || !session.caller) return signIn();
  const { path, rest } = route();
  const isAdmin = session.caller.role === "admin";
  let entry = PAGES.find((p) => p.path === path && (!p.admin || isAdmin));
  let page = entry && entry.page;
  if (path === "instances" && rest.length) page = instance;
  for (const a of nav.querySelectorAll("a")) {
    if (a.dataset.path === path) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  nav.classList.remove("open");
  menu.setAttribute("aria-expanded", "false");
  if (!page) {
    replace(main, h("h1", { text: "Not found" }), h("p", {}, h("a", { href: "#/instances", text: "Instances" })));
    return;
  }
  main.replaceChildren();
  leave = (await page.render(main, rest)) || null;
}

function chrome() {
  const isAdmin = session.caller.role === "admin";
  replace(nav, PAGES.filter((p) => !p.admin || isAdmin).map((p) =>
    h("a", { href: "#/" + p.path, "data-path": p.path, text: p.label })));
  nav.hidden = false;
  menu.hidden = false;
  const out = h("button", { type: "button", text: "Sign out", onclick: () => {
    session.signOut(); session.caller = null; location.hash = "#/instances"; show();
  } });
  if (isAdmin) {
    const pick = h("select", { "aria-label": "Project", id: "project-pick", onchange: () => {
      session.setProject(pick.value); show();
    } });
    get("/v1/projects").then((list) => {
      if (!session.project()) session.setProject("default");
      replace(pick, list.map((p) => h("option", { value: p.name, text: p.name,
        selected: p.name === session.project() })));
    }).catch(() => {});
    replace(who, h("span", { text: "admin · project" }), pick, out);
  } else {
    replace(who, h("span", { text: `project ${session.caller.project}` }), out);
  }
  who.hidden = false;
}

function unchrome() {
  nav.hidden = true; who.hidden = true; menu.hidden = true;
  replace(nav); replace(who);
}

function signIn() {
  unchrome();
  const input = h("input", { type: "password", id: "token", name: "token", autocomplete: "off",
    spellcheck: "false", required: true, placeholder: "cmo_…" });
  const button = h("button", { class: "primary", type: "submit", text: "Sign in" });
  const form = h("form", { class: "panel signin", onsubmit: async (ev) => {
    ev.preventDefault();
    setError(form, "token", "");
    button.disabled = true;
    try {
      const caller = await get("/v1/whoami", { token: input.value.trim(), raw: true });
      session.signIn(input.value.trim());
      session.caller = caller;
      chrome();
      await show();
      main.focus();
    } catch (e) {
      setError(form, "token", e instanceof ApiError ? e.detail : String(e));
      input.focus();
    } finally {
      button.disabled = false;
    }
  } },
  h("h1", { text: "Sign in to cumulo" }),
  field("Project token", input, { name: "token",
    hint: "An admin or project token (cumulo project token NAME). Kept in this tab only." }),
  h("div", { class: "row" }, button));
  replace(main, form);
  input.focus();
}

menu.addEventListener("click", () => {
  const open = nav.classList.toggle("open");
  menu.setAttribute("aria-expanded", String(open));
});
window.addEventListener("hashchange", show);
window.addEventListener("cumulo:signed-out", () => {
  session.signOut(); session.caller = null; show();
});

(async () => {
  if (session.token()) {
    try {
      session.caller = await get("/v1/whoami", { raw: true });
      chrome();
    } catch (e) {
      session.signOut();
    }
  }
  await show();
})();
