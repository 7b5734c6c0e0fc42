// The login panel. The API key is typed once and exchanged for a session cookie
// (POST /session): HttpOnly, so no script on this page can read it, and sent by the browser on
// every request and on the WebSocket. The key itself is kept nowhere.

import { request } from "./api.js";
import { $, showError, showNotice, whenSessionEnds } from "./messages.js";
import { setConnection, stopSocket } from "./socket.js";

export function askForKey(message) {
  stopSocket();
  $("change-key").hidden = true;
  setConnection("disconnected", "Disconnected");
  $("dashboard").hidden = true;
  $("key-section").hidden = false;
  showError(message || "");
  $("key-input").value = "";
  $("key-input").focus();
}

async function onKeySubmit(event, startDashboard) {
  event.preventDefault();
  const key = $("key-input").value.trim();
  $("key-input").value = "";
  showError("");
  try {
    await request("POST", "/session", { api_key: key });
  } catch (error) {
    const words =
      error.status === 401 ? "The API key was not accepted. Enter it again." : error.message;
    askForKey(words);
    return;
  }
  $("key-section").hidden = true;
  showNotice("Connecting…");
  startDashboard();
}

async function logOut() {
  stopSocket(); // before the daemon closes it: no reconnect attempt in between
  try {
    await request("DELETE", "/session");
  } catch {
    // the daemon is away: the cookie goes with the browser session anyway
  }
  showNotice("");
  askForKey("");
}

// At start: is there a session (or no key at all)? One REST call answers; then the dashboard
// starts, or the key is asked for.
export async function setupSession(startDashboard) {
  whenSessionEnds(askForKey);
  $("key-form").addEventListener("submit", (event) => onKeySubmit(event, startDashboard));
  $("change-key").addEventListener("click", logOut);
  sessionStorage.removeItem("lawchatd.apiKey"); // where an older version kept the key
  try {
    await request("GET", "/models/download-progress");
  } catch (error) {
    if (error.status === 401) {
      askForKey("");
      return;
    }
    // Not reachable now: the WebSocket's reconnect loop says so and tries again.
  }
  startDashboard();
}
