/*
 * The participant API as the page uses it: JSON in and out.
 *
 * Network failures, 5xx, 408 and 429 may pass (a server restart, a burst of starts), so they are
 * retried with backoff while the page says it is waiting, or after the server's retry_after_ms
 * when it names one (experiment/admission.py). Any other answer is final: a JSON error becomes an
 * ApiError (its message is for developers and never shown), and a reply that is not JSON at all
 * (a proxy's HTML page, for example a 413) becomes an UnreadableReply, never an endless retry.
 */
export const API = "/api/v1";

export class ApiError extends Error {
  constructor(status, data) {
    super((data && data.error) || ("error " + status));
    this.status = status;
    this.data = data || {};
    this.reason = this.data.reason || null;
  }
}

export class UnreadableReply extends Error {
  constructor(status) {
    super("the server answered " + status + " with something that is not JSON");
    this.status = status;
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const waiting = document.getElementById("waiting");

async function attempt(method, path, body) {
  try {
    const res = await fetch(API + path, {
      method: method,
      headers: body === undefined ? {} : { "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "same-origin",
    });
    const text = await res.text();
    let data;
    try { data = JSON.parse(text); } catch (e) { data = undefined; }
    return { res: res, data: data };
  } catch (err) {
    return { res: null, data: undefined }; // the network: the request may or may not have arrived
  }
}

export async function api(method, path, body) {
  let delay = 500;
  for (;;) {
    const { res, data } = await attempt(method, path, body);
    if (res && res.status < 500 && res.status !== 408 && res.status !== 429) {
      waiting.hidden = true;
      if (data === null || typeof data !== "object") throw new UnreadableReply(res.status);
      if (!res.ok) throw new ApiError(res.status, data);
      return data;
    }
    waiting.hidden = false;
    if (res && data && typeof data.retry_after_ms === "number") {
      await sleep(Math.min(Math.max(data.retry_after_ms, 50), 10000));
      continue;
    }
    await sleep(delay);
    delay = Math.min(delay * 2, 8000);
  }
}

/* localStorage under one prefix; private modes without storage still work (resume by PROLIFIC_PID). */
export function makeStorage(prefix) {
  return function storage(key, value) {
    try {
      if (value === undefined) return JSON.parse(localStorage.getItem(prefix + ":" + key) || "null");
      if (value === null) localStorage.removeItem(prefix + ":" + key);
      else localStorage.setItem(prefix + ":" + key, JSON.stringify(value));
    } catch (e) { /* no storage */ }
    return null;
  };
}
