// Talking to the proxy: the same HTTP API as every other client, with a Bearer token.
//
// Errors arrive in Ollama's shape {"error": "..."} (OpenAI's {"error": {"message"}} on
// /v1); ApiError carries the status, the message and Retry-After (seconds) when given.
// A 401 on a call that carried a token means the session is over: onUnauthorized runs.

// The proxy's root, from the page's own address: /ui/ sits one level below it, so the
// page also works behind another reverse proxy that adds a path prefix.
export const BASE = new URL("../", document.baseURI);

export class ApiError extends Error {
  constructor(status, message, retryAfter = null) {
    super(message);
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

export function retryAfterOf(response) {
  const raw = response.headers.get("Retry-After");
  if (raw === null) return null;
  const seconds = Number(raw);
  if (Number.isFinite(seconds)) return Math.max(0, seconds);
  const when = Date.parse(raw);
  return Number.isNaN(when) ? null : Math.max(0, (when - Date.now()) / 1000);
}

export async function errorOf(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    const data = await response.json();
    const error = data && data.error;
    if (typeof error === "string") message = error;
    else if (error && typeof error.message === "string") message = error.message;
  } catch {
    // Not JSON: keep the status line.
  }
  return new ApiError(response.status, message, retryAfterOf(response));
}

export class Api {
  constructor({ token = () => null, onUnauthorized = () => {} } = {}) {
    this.token = token;
    this.onUnauthorized = onUnauthorized;
  }

  url(path) {
    return new URL(path.replace(/^\//, ""), BASE).toString();
  }

  // The raw response (for streams); errors before the first byte are the caller's.
  async fetch(method, path, { body, headers = {}, signal } = {}) {
    const token = this.token();
    const all = { ...headers };
    if (token) all.Authorization = `Bearer ${token}`;
    if (body !== undefined) all["Content-Type"] = "application/json";
    const response = await fetch(this.url(path), {
      method,
      headers: all,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      credentials: "omit", // Bearer tokens only: the page never relies on cookies
      cache: "no-store",
    });
    if (response.status === 401 && token) this.onUnauthorized();
    return response;
  }

  // JSON in, JSON out; ApiError for any status that is not 2xx.
  async call(method, path, body, options = {}) {
    const response = await this.fetch(method, path, { ...options, body });
    if (!response.ok) throw await errorOf(response);
    if (response.status === 204) return null;
    return response.json();
  }

  get(path) {
    return this.call("GET", path);
  }

  post(path, body) {
    return this.call("POST", path, body);
  }
}

// The lines of an NDJSON stream as objects, as they arrive.
export async function* ndjson(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, end).trim();
      buffer = buffer.slice(end + 1);
      if (line) yield JSON.parse(line);
    }
  }
  buffer += decoder.decode();
  if (buffer.trim()) yield JSON.parse(buffer);
}
