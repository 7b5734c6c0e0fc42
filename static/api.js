// REST calls to the daemon. The session cookie goes along on its own; an error becomes an
// ApiError whose message is a sentence for the user.

import { sentence } from "./format.js";

// The daemon's 409s say what to do themselves (cancel, unload, queue).
const STATUS_HINTS = {
  503: "Load a downloaded model first.",
  507: "Free some disk space and try again.",
};

const STATUS_WORDS = {
  400: "The daemon did not accept the request",
  404: "Not found",
  409: "The daemon is busy with another task",
  413: "The request is too large",
  422: "The daemon did not understand the request",
  429: "The model is busy with other questions",
  500: "The daemon had an internal error",
  503: "No model is loaded",
  507: "Not enough disk space",
};

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status; // 0: the daemon could not be reached
  }
}

// Turns an HTTP error into a sentence: the daemon's `detail` is already one, else our words.
async function httpError(response) {
  if (response.status === 401) {
    return new ApiError(401, "The session has ended. Enter the API key again.");
  }
  let detail = null;
  try {
    const body = await response.json();
    detail = body.detail ?? body.error?.message; // /v1 answers in OpenAI's shape
  } catch {
    // not JSON (a proxy's error page): fall back to our own words
  }
  const base = typeof detail === "string" && detail ? detail : STATUS_WORDS[response.status];
  const words = base
    ? sentence(base)
    : `The daemon answered with an unexpected error (HTTP ${response.status}).`;
  const hint = STATUS_HINTS[response.status];
  return new ApiError(response.status, hint ? `${words} ${hint}` : words);
}

export async function request(method, path, body, signal) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
    });
  } catch (error) {
    if (signal && signal.aborted) throw error;
    throw new ApiError(0, "Cannot reach lawchatd. The daemon may be stopped or restarting.");
  }
  if (!response.ok) throw await httpError(response);
  return response;
}

export async function api(method, path, body) {
  return (await request(method, path, body)).json();
}
