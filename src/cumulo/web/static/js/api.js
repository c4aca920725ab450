// The REST API, as any script would call it. The token lives in this tab's sessionStorage
// (never in a URL, never in localStorage: closing the tab forgets it).
const TOKEN = "cumulo.token";
const PROJECT = "cumulo.project";

export const session = {
  token: () => sessionStorage.getItem(TOKEN),
  project: () => sessionStorage.getItem(PROJECT),
  signIn(token) { sessionStorage.setItem(TOKEN, token); },
  setProject(name) {
    if (name) sessionStorage.setItem(PROJECT, name); else sessionStorage.removeItem(PROJECT);
  },
  signOut() { sessionStorage.removeItem(TOKEN); sessionStorage.removeItem(PROJECT); },
  caller: null, // {role, project} from /v1/whoami
};

export class ApiError extends Error {
  constructor(status, code, detail) {
    super(detail);
    this.status = status;
    this.code = code;
    this.detail = detail;
  }
}

// Admins act in the project chosen in the header; members in their own (no parameter).
export function scoped(path) {
  const project = session.caller && session.caller.role === "admin" ? session.project() : null;
  if (!project) return path;
  return path + (path.includes("?") ? "&" : "?") + "project=" + encodeURIComponent(project);
}

export async function call(method, path, body, { token, raw } = {}) {
  const headers = { Authorization: `Bearer ${token || session.token()}` };
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let r;
  try {
    r = await fetch(raw ? path : scoped(path), init);
  } catch (e) {
    throw new ApiError(0, "unreachable", "the API cannot be reached: " + e.message);
  }
  if (r.status === 204) return null;
  const type = r.headers.get("content-type") || "";
  const data = type.includes("json") ? await r.json() : await r.text();
  if (!r.ok) {
    const code = (data && data.code) || "http_" + r.status;
    const detail = (data && data.detail) || String(data);
    if (r.status === 401 && !token) window.dispatchEvent(new CustomEvent("cumulo:signed-out"));
    throw new ApiError(r.status, code, detail);
  }
  return data;
}

export const get = (path, opts) => call("GET", path, undefined, opts);
export const post = (path, body, opts) => call("POST", path, body, opts);
export const del = (path, opts) => call("DELETE", path, undefined, opts);
