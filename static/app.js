// lawchatd dashboard: plain ES modules, no build step, no network access beyond the daemon.
//
// Live state arrives only over the WebSocket /ws/progress (a snapshot, then changes); REST is
// used for actions and to re-read the model list and the loaded model when an event says they
// changed. Progress is never polled. Server text is always set with textContent.
//
// This entry module starts the panels and routes the WebSocket's messages to them:
// session.js (login), socket.js (the connection), downloads.js, models.js (the list and the
// loaded model), network.js (cap and queue), chat.js.

import { setupChat } from "./chat.js";
import { applyProgress, renderProgress } from "./downloads.js";
import { $, showNotice } from "./messages.js";
import { onModelEvent, refreshModels, renderLoaded, setupModels } from "./models.js";
import { onNetworkMessage, renderCap, renderQueue, setupNetwork } from "./network.js";
import { setupPeople } from "./people.js";
import { setupSession } from "./session.js";
import {
  connect,
  connected,
  dropSocket,
  reconnectNow,
  setConnection,
  whenConnectionChanges,
} from "./socket.js";
import { state } from "./state.js";

function onSocketMessage(message) {
  if (message.type === "snapshot") {
    connected();
    showNotice("");
    state.models = message.available_models || {};
    state.progress = message;
    renderProgress(message);
    renderLoaded(message.loaded_model); // renders the model list too
    renderCap(message.bandwidth);
    renderQueue(message.downloads);
  } else if (onNetworkMessage(message)) {
    // the bandwidth cap or the queue: handled in the network panel
  } else if (message.type === "progress") {
    applyProgress(message);
  } else if (message.type === "model") {
    onModelEvent(message);
  }
}

// Lost: the panels are dimmed and inert (no button can act on a stale picture), a banner
// says why, and the download panel stops showing a speed. Back: the snapshot redraws them.
function onConnectionChange(kind) {
  const lost = kind === "reconnecting" || kind === "disconnected";
  $("dashboard").inert = lost;
  $("offline").hidden = !lost;
  renderProgress(state.progress);
}

function startDashboard() {
  $("dashboard").hidden = false;
  $("change-key").hidden = false;
  setupPeople(); // who is logged in: hides what their role may not do; the admin's key panel
  setConnection("connecting", "Connecting…");
  connect({
    // The snapshot follows at once; re-read the list too, as the daemon may have restarted
    // with other files on disk.
    onOpen: refreshModels,
    onMessage: onSocketMessage,
    // A refused key fails the handshake, which a browser cannot tell from a stopped daemon;
    // one REST call tells them apart (a 401 then asks for the key and stops reconnecting).
    onRefused: refreshModels,
  });
}

function main() {
  setupChat();
  setupNetwork();
  setupModels();
  whenConnectionChanges(onConnectionChange);
  window.addEventListener("online", reconnectNow);
  window.addEventListener("offline", dropSocket);
  setupSession(startDashboard);
}

main();
