// The console's only way to the fleet: the gateway's public HTTP API, with the access key
// the user signed in with (kept in sessionStorage: gone when the tab closes).

const STORAGE = "recofleet.console.session";
export const ADMIN = "admin";

export class ApiError extends Error {
  constructor(status, detail, method, path) {
    super(detail);
    this.status = status;
    this.detail = detail;
    this.method = method;
    this.path = path;
  }
}

let current = load();
const listeners = new Set();

function load() {
  try {
    const raw = sessionStorage.getItem(STORAGE);
    if (!raw) return null;
    const parsed = JSON.parse(raw);
    return parsed && typeof parsed.key === "string" ? parsed : null;
  } catch {
    return null;
  }
}

export function session() {
  return current;
}

export function onSessionChange(listener) {
  listeners.add(listener);
}

function setSession(value) {
  current = value;
  if (value) sessionStorage.setItem(STORAGE, JSON.stringify(value));
  else sessionStorage.removeItem(STORAGE);
  for (const listener of listeners) listener(value);
}

export function signOut(reason) {
  setSession(null);
  if (reason) sessionStorage.setItem(`${STORAGE}.reason`, reason);
}

export function takeSignOutReason() {
  const reason = sessionStorage.getItem(`${STORAGE}.reason`);
  sessionStorage.removeItem(`${STORAGE}.reason`);
  return reason;
}

// Whether the signed-in key has `scope` (admin implies every scope).
export function has(scope) {
  if (!current) return false;
  return current.scopes.includes(ADMIN) || current.scopes.includes(scope);
}

export function needs(scope) {
  return has(scope) ? null : `needs scope ${scope}`;
}

function url(path, query) {
  const target = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== "") target.searchParams.set(name, value);
  }
  return target.pathname + target.search;
}

async function detailOf(response) {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    if (body && typeof body.detail === "string") return body.detail;
    if (body && body.detail) return JSON.stringify(body.detail);
  } catch {
    // not JSON: the status line says enough
  }
  return text.trim().slice(0, 300) || `${response.status} ${response.statusText}`;
}

// One call of the API. Answers the parsed JSON (null for 204), or the Response with
// `raw: true`; throws ApiError with the API's own `detail` for any status that is not 2xx.
export async function api(path, { method = "GET", body, query, raw = false, key, keepalive } = {}) {
  const secret = key ?? current?.key;
  const headers = { Accept: "application/json" };
  if (secret) headers.Authorization = `Bearer ${secret}`;
  const init = { method, headers, cache: "no-store", credentials: "omit", keepalive };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(url(path, query), init);
  } catch (error) {
    throw new ApiError(0, `the gateway did not answer (${error.message})`, method, path);
  }
  if (!response.ok) {
    const detail = await detailOf(response);
    if (response.status === 401 && key === undefined && current) {
      signOut(`Signed out: ${detail}`);
    }
    throw new ApiError(response.status, detail, method, path);
  }
  if (raw) return response;
  if (response.status === 204) return null;
  const type = response.headers.get("content-type") || "";
  return type.includes("json") ? response.json() : response.text();
}

// What a key may do, as the gateway says (GET /v1/access-key answers any valid key).
export async function identify(key) {
  const me = await api("/v1/access-key", { key });
  return { key, keyId: me.key_id, name: me.name, scopes: me.scopes };
}

export async function signIn(key) {
  const found = await identify(key.trim());
  setSession(found);
  return found;
}

// Fetch a file the API streams (a CSV export) with the key, and hand it to the browser as a
// download: a plain link could not send the Authorization header.
export async function download(path, query, filename) {
  const response = await api(path, { query, raw: true });
  const blob = await response.blob();
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
  return blob.size;
}
