// The WebSocket /ws/progress: the only source of live state (a snapshot, then changes).
// It reconnects with exponential backoff and jitter, so a restarted daemon is not hit by every
// tab at once.

import { $ } from "./messages.js";

const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 10_000;

const link = {
  socket: null,
  retryTimer: null,
  backoff: BACKOFF_MIN_MS,
  handlers: null, // {onOpen, onMessage, onRefused}: set by connect()
};

let onConnectionChange = () => {};

// Called with the new kind whenever the connection changes (the panels dim what is stale).
export function whenConnectionChanges(handler) {
  onConnectionChange = handler;
}

export function setConnection(kind, text) {
  const indicator = $("connection");
  indicator.dataset.state = kind;
  $("connection-text").textContent = text;
  const before = document.body.dataset.connection;
  document.body.dataset.connection = kind;
  if (before !== kind) onConnectionChange(kind);
}

function socketUrl() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${location.host}/ws/progress`; // the session cookie goes along
}

// Opens the socket with the handlers to call: onOpen (the snapshot follows), onMessage (each
// parsed message), onRefused (closed before it opened: a refused session or a stopped daemon).
export function connect(handlers) {
  link.handlers = handlers;
  link.backoff = BACKOFF_MIN_MS;
  openSocket();
}

function openSocket() {
  clearTimeout(link.retryTimer);
  link.retryTimer = null;
  const socket = new WebSocket(socketUrl());
  let opened = false;
  link.socket = socket;
  socket.addEventListener("open", () => {
    opened = true;
    link.handlers.onOpen();
  });
  socket.addEventListener("message", (event) => {
    if (socket === link.socket) link.handlers.onMessage(JSON.parse(event.data));
  });
  socket.addEventListener("close", () => {
    if (socket !== link.socket) return; // replaced or stopped on purpose
    link.socket = null;
    if (!opened) link.handlers.onRefused();
    scheduleReconnect();
  });
}

// A working connection (its snapshot arrived) starts the backoff over.
export function connected() {
  link.backoff = BACKOFF_MIN_MS;
  setConnection("connected", "Connected");
}

export function stopSocket() {
  clearTimeout(link.retryTimer);
  link.retryTimer = null;
  const socket = link.socket;
  link.socket = null;
  if (socket) socket.close();
}

function scheduleReconnect() {
  if (!$("key-section").hidden) return; // waiting for a key: nothing to reconnect with
  if (!navigator.onLine) {
    setConnection("disconnected", "Disconnected (this computer is offline)");
    return; // the "online" event reconnects
  }
  const delay = link.backoff * (0.5 + Math.random() * 0.5);
  link.backoff = Math.min(link.backoff * 2, BACKOFF_MAX_MS);
  setConnection("reconnecting", "Reconnecting…");
  clearTimeout(link.retryTimer);
  link.retryTimer = setTimeout(openSocket, delay);
}

export function reconnectNow() {
  if (!$("key-section").hidden || link.socket || !link.handlers) return;
  link.backoff = BACKOFF_MIN_MS;
  openSocket();
}

// Offline: close the socket; its close event schedules nothing while the computer is offline.
export function dropSocket() {
  if (link.socket) link.socket.close();
}
