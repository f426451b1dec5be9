// Loom's guest SDK for JavaScript activities (ABI component-v1).
//
// `loom build` puts this module first in the component and makes it the global `loom`,
// so a handler can call, without importing anything:
//
//   loom.log("priced", { level: "info", order: 7 })   // needs capabilities.log
//   loom.http("GET", "https://api.example.com/x")      // needs capabilities.http (allowlist)
//   loom.secret("API_TOKEN")                           // needs capabilities.secrets
//   loom.env("REGION")                                 // needs capabilities.env
//   loom.idempotencyKey()                              // always available
//
// Throw `new loom.ActivityError(message, { code, retryable, details })` to return a
// structured error the caller's retry policy can act on; any other exception becomes a
// non-retryable guest_error with its type, message and (truncated) stack.
import * as host from "loom:activity/host@1.0.0";

export class ActivityError extends Error {
  constructor(message, { code = "activity_error", retryable = false, details } = {}) {
    super(message);
    this.name = "ActivityError";
    this.code = code;
    this.retryable = retryable;
    this.details = details;
  }
}

export function log(message, fields = {}) {
  const { level = "info", ...rest } = fields;
  host.log(String(level), String(message), JSON.stringify(rest));
}

// `body` is a string (send JSON as JSON.stringify(value)); `headers` an object of names to
// values. Anything else is a TypeError here: the host would otherwise send no body at all.
export function http(method, url, { headers = {}, body } = {}) {
  if (body != null && typeof body !== "string") {
    throw new TypeError(`loom.http: body must be a string, not ${describe(body)} ` +
                        "(send JSON as JSON.stringify(value))");
  }
  if (headers != null && (typeof headers !== "object" || Array.isArray(headers))) {
    throw new TypeError(`loom.http: headers must be an object, not ${describe(headers)}`);
  }
  return JSON.parse(host.http(JSON.stringify({ method, url, headers: headers ?? {}, body })));
}

function describe(value) {
  return Array.isArray(value) ? "an array" : typeof value === "object" ? "an object" : typeof value;
}

export function secret(name) {
  return host.secret(name) ?? null;
}

export function env(name) {
  return host.env(name) ?? null;
}

export function idempotencyKey() {
  return host.idempotencyKey();
}

globalThis.loom = { ActivityError, log, http, secret, env, idempotencyKey };
