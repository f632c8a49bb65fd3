// The gateway's HTTP API as the page uses it: JSON (or a multipart form) in, JSON or a file out,
// failures as ApiError carrying the gateway's own `{"error": {code, message, retryable}}`.

const KEY_STORAGE = "flowise-sse.apiKey";

export class ApiError extends Error {
  constructor(status, code, message, retryable = false) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryable = retryable;
  }
}

// The key lives in sessionStorage: this tab only, gone with it (a key is a secret; a
// conversation is not, so that one is kept in localStorage).
export function apiKey() {
  try {
    return sessionStorage.getItem(KEY_STORAGE) || "";
  } catch {
    return "";
  }
}

export function setApiKey(value) {
  try {
    if (value) sessionStorage.setItem(KEY_STORAGE, value);
    else sessionStorage.removeItem(KEY_STORAGE);
  } catch {
    /* storage disabled: the key lives as long as the field's value */
  }
}

export function authHeaders() {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

export function apiUrl(path) {
  return new URL(path, document.baseURI);
}

/** A call that answers JSON. `body`: a value sent as JSON, or a FormData sent as multipart. */
export async function api(method, path, body, options = {}) {
  const response = await call(method, path, body, options);
  return response.status === 204 ? null : response.json();
}

/** A file the gateway serves (a stored upload): its bytes, as a Blob typed by the answer. */
export async function apiBlob(path) {
  return (await call("GET", path)).blob();
}

async function call(method, path, body, options = {}) {
  const headers = authHeaders();
  const multipart = body instanceof FormData;
  if (body !== undefined && !multipart) headers["Content-Type"] = "application/json"; // the browser sets multipart's
  let response;
  try {
    response = await fetch(apiUrl(path), {
      method,
      headers,
      body: body === undefined || multipart ? body : JSON.stringify(body),
      ...options,
    });
  } catch {
    throw new ApiError(0, "network_error", "Could not reach the gateway (offline, or the browser blocked the request).", true);
  }
  if (response.ok) return response;
  let error = { code: `http_${response.status}`, message: response.statusText || "The request failed.", retryable: false };
  try {
    const data = await response.json();
    if (data && data.error && typeof data.error.message === "string") error = { ...error, ...data.error };
  } catch {
    /* not the gateway's JSON (a proxy's page): the status line is all there is */
  }
  throw new ApiError(response.status, String(error.code), error.message, Boolean(error.retryable));
}

/** A failure in the gateway's words: its JSON error's (or `error` event's) message and code. */
export function failureOf(err) {
  if (!(err instanceof ApiError)) return { code: "error", message: String(err && err.message ? err.message : err) };
  const hint = err.status === 401 ? " Enter it under “Gateway API key”." : "";
  return { code: err.status ? `${err.status} ${err.code}` : err.code, message: sentence(err.message) + hint };
}

export function sentence(text) {
  const s = String(text || "").trim();
  if (!s) return "The request failed.";
  return /[.!?…)]$/.test(s) ? s : `${s}.`;
}
