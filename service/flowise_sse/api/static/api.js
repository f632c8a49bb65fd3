// The gateway's HTTP API as the page uses it: JSON in, JSON out, failures as ApiError carrying
// the gateway's own `{"error": {code, message, retryable}}`.

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

export async function api(method, path, body, options = {}) {
  const headers = authHeaders();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(apiUrl(path), {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      ...options,
    });
  } catch {
    throw new ApiError(0, "network_error", "Could not reach the gateway (offline, or the browser blocked the request).", true);
  }
  if (response.ok) return response.status === 204 ? null : response.json();
  let error = { code: `http_${response.status}`, message: response.statusText || "The request failed.", retryable: false };
  try {
    const data = await response.json();
    if (data && data.error && typeof data.error.message === "string") error = { ...error, ...data.error };
  } catch {
    /* not the gateway's JSON (a proxy's page): the status line is all there is */
  }
  throw new ApiError(response.status, String(error.code), error.message, Boolean(error.retryable));
}
