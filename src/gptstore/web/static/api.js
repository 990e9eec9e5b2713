// The HTTP API as the pages use it: JSON in and out, OpenAI's error envelope turned
// into an Error whose message says what went wrong, and server-sent events read from
// a streamed response.
//
// Every request goes through `authHeaders()`: the key the login page stored
// (account.js), if any. In local mode (one user, no accounts) no key is needed.

export const API_KEY_STORAGE = "gptstore.api_key";

export function authHeaders() {
  const key = window.localStorage.getItem(API_KEY_STORAGE);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// Who the caller is (GET /api/me), asked once per page load; null when the store
// wants a key and none (or a bad one) is set.
let whoamiPromise = null;

export function whoami() {
  if (!whoamiPromise) {
    whoamiPromise = getJSON("/api/me").catch((err) => {
      if (err.status === 401) return null;
      throw err;
    });
  }
  return whoamiPromise;
}

export function setApiKey(key) {
  if (key) window.localStorage.setItem(API_KEY_STORAGE, key);
  else window.localStorage.removeItem(API_KEY_STORAGE);
  whoamiPromise = null;
}

export class ApiError extends Error {
  constructor(status, message, param) {
    super(message);
    this.status = status;
    this.param = param;
  }
}

async function errorOf(response) {
  let message = `${response.status} ${response.statusText}`;
  let param = null;
  try {
    const body = await response.json();
    if (body && body.error) {
      message = body.error.message || message;
      param = body.error.param || null;
    }
  } catch (_) { /* not JSON: keep the status line */ }
  return new ApiError(response.status, message, param);
}

export async function request(method, url, { body, form, signal } = {}) {
  const headers = { ...authHeaders() };
  let payload;
  if (form) {
    payload = form;  // multipart: the browser sets the boundary
  } else if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(url, { method, headers, body: payload, signal });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "The server cannot be reached: is `gptstore serve` running?");
  }
  if (response.status === 401 && window.localStorage.getItem(API_KEY_STORAGE)) {
    // the stored key expired or was revoked: forget it, so the next page asks for a
    // sign-in (or reads what anonymous readers may) instead of failing the same way
    setApiKey(null);
  }
  if (!response.ok) throw await errorOf(response);
  return response;
}

export async function getJSON(url, options) {
  return (await request("GET", url, options)).json();
}

export async function sendJSON(method, url, body, options = {}) {
  return (await request(method, url, { ...options, body })).json();
}

export function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") search.set(key, value);
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

// POST a streaming completion and call onData(json) for each SSE `data:` line until
// `[DONE]`. `signal` aborts the request: the server frees the slot at once.
export async function stream(url, body, onData, signal) {
  const response = await request("POST", url, { body: { ...body, stream: true }, signal });
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        const parsed = JSON.parse(data);
        if (parsed.error) throw new ApiError(500, parsed.error.message || "stream failed");
        onData(parsed);
      }
    }
  }
}
