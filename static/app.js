// lawchatd dashboard: plain ES module, no build step, no network access beyond the daemon.
//
// Live state arrives only over the WebSocket /ws/progress (a snapshot, then changes); REST is
// used for actions and to re-read the model list and the loaded model when an event says they
// changed. Progress is never polled. Server text is always set with textContent.
//
// The API key is typed once and exchanged for a session cookie (POST /session): HttpOnly, so
// no script on this page can read it, and sent by the browser on every request and on the
// WebSocket. The key itself is kept nowhere.

const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 10_000;

const PHASE_WORDS = {
  resolving: "Asking the Hub for the file",
  downloading: "Downloading",
  retrying: "Connection problem, retrying",
  verifying: "Checking the file (size and sha256)",
  loading: "Loading the model",
};

const STATUS_HINTS = {
  409: "Try again when it has finished.",
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

const state = {
  socket: null,
  retryTimer: null,
  backoff: BACKOFF_MIN_MS,
  models: {}, // variant -> available_models entry
  cards: new Map(), // variant -> the DOM nodes of its card, kept so focus survives updates
  progress: { status: "idle" },
  loaded: null,
};

const $ = (id) => document.getElementById(id);

// ---- formatting (decimal units, as disk vendors and the catalog sizes use) ----------------

function formatBytes(bytes) {
  if (bytes == null) return "–";
  if (bytes >= 1e9) return `${(bytes / 1e9).toFixed(2)} GB`;
  if (bytes >= 1e6) return `${(bytes / 1e6).toFixed(1)} MB`;
  if (bytes >= 1e3) return `${(bytes / 1e3).toFixed(0)} kB`;
  return `${bytes} bytes`;
}

function formatSpeed(bytesPerSecond) {
  if (bytesPerSecond == null) return "–";
  return `${(bytesPerSecond / 1e6).toFixed(1)} MB/s`;
}

function formatEta(seconds) {
  if (seconds == null) return "–";
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

function formatPercent(value) {
  return `${Number(value || 0).toFixed(1)} %`;
}

function sentence(text) {
  const trimmed = String(text).trim();
  return /[.!?]$/.test(trimmed) ? trimmed : `${trimmed}.`;
}

// ---- messages to the user ------------------------------------------------------------------

function showNotice(text) {
  $("notice").textContent = text;
}

function showError(text) {
  const box = $("error");
  box.textContent = text;
  box.hidden = !text;
}

// ---- REST ------------------------------------------------------------------------------------

class ApiError extends Error {
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

async function request(method, path, body) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError(0, "Cannot reach lawchatd. The daemon may be stopped or restarting.");
  }
  if (!response.ok) throw await httpError(response);
  return response;
}

async function api(method, path, body) {
  return (await request(method, path, body)).json();
}

// One place decides what a failure means: a refused key asks for the key, the rest is shown.
function reportFailure(error, context) {
  if (error.status === 401) {
    askForKey(error.message);
  } else {
    showError(context ? `${context}: ${error.message}` : error.message);
  }
}

// ---- the API key and the session ----------------------------------------------------------------

function askForKey(message) {
  stopSocket();
  $("change-key").hidden = true;
  setConnection("disconnected", "Disconnected");
  $("dashboard").hidden = true;
  $("key-section").hidden = false;
  showError(message || "");
  $("key-input").value = "";
  $("key-input").focus();
}

async function onKeySubmit(event) {
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

// At start: is there a session (or no key at all)? One REST call answers.
async function checkAccess() {
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

// ---- the WebSocket -----------------------------------------------------------------------------

function setConnection(kind, text) {
  const indicator = $("connection");
  indicator.dataset.state = kind;
  $("connection-text").textContent = text;
  document.body.dataset.connection = kind;
}

function socketUrl() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${location.host}/ws/progress`; // the session cookie goes along
}

function openSocket() {
  clearTimeout(state.retryTimer);
  state.retryTimer = null;
  const socket = new WebSocket(socketUrl());
  let opened = false;
  state.socket = socket;
  socket.addEventListener("open", () => {
    opened = true;
    // The snapshot follows at once; re-read the list too, as the daemon may have restarted
    // with other files on disk.
    refreshModels();
  });
  socket.addEventListener("message", (event) => {
    if (socket === state.socket) onSocketMessage(JSON.parse(event.data));
  });
  socket.addEventListener("close", () => {
    if (socket !== state.socket) return; // replaced or stopped on purpose
    state.socket = null;
    // A refused key fails the handshake, which a browser cannot tell from a stopped daemon;
    // one REST call tells them apart (a 401 then asks for the key and stops reconnecting).
    if (!opened) refreshModels();
    scheduleReconnect();
  });
}

function stopSocket() {
  clearTimeout(state.retryTimer);
  state.retryTimer = null;
  const socket = state.socket;
  state.socket = null;
  if (socket) socket.close();
}

// Exponential backoff with jitter, so a restarted daemon is not hit by every tab at once.
function scheduleReconnect() {
  if (!$("key-section").hidden) return; // waiting for a key: nothing to reconnect with
  if (!navigator.onLine) {
    setConnection("disconnected", "Disconnected (this computer is offline)");
    return; // the "online" event reconnects
  }
  const delay = state.backoff * (0.5 + Math.random() * 0.5);
  state.backoff = Math.min(state.backoff * 2, BACKOFF_MAX_MS);
  setConnection("reconnecting", "Reconnecting…");
  clearTimeout(state.retryTimer);
  state.retryTimer = setTimeout(openSocket, delay);
}

function reconnectNow() {
  if (!$("key-section").hidden || state.socket) return;
  state.backoff = BACKOFF_MIN_MS;
  openSocket();
}

function onSocketMessage(message) {
  if (message.type === "snapshot") {
    state.backoff = BACKOFF_MIN_MS; // a working connection resets the backoff
    setConnection("connected", "Connected");
    showNotice("");
    state.models = message.available_models || {};
    state.progress = message;
    renderProgress(message);
    renderLoaded(message.loaded_model); // renders the model list too
    renderCap(message.bandwidth);
    renderQueue(message.downloads);
  } else if (onNetworkMessage(message)) {
    // the bandwidth cap or the queue: handled in the network block
  } else if (message.type === "progress") {
    applyProgress(message);
  } else if (message.type === "model") {
    onModelEvent(message);
  }
}

// ---- download progress -----------------------------------------------------------------------

function applyProgress(progress) {
  const before = state.progress;
  state.progress = progress;
  renderProgress(progress);
  const changed =
    before.status !== progress.status || before.model_variant !== progress.model_variant;
  if (changed && progress.status !== "downloading") {
    // Finished, failed or cancelled: what is on disk changed, so read the list again.
    refreshModels();
    announceOutcome(progress);
  } else {
    renderModels();
  }
}

function announceOutcome(progress) {
  const name = progress.model_variant;
  if (progress.status === "completed") showNotice(`${name} is downloaded and verified.`);
  if (progress.status === "cancelled") showNotice(`The download of ${name} was cancelled.`);
  if (progress.status === "error") showNotice(""); // the reason is shown in the download panel
}

function downloadTitle(p) {
  const name = p.model_variant;
  switch (p.status) {
    case "downloading":
      return p.phase === "loading" ? `Loading ${name}` : `Downloading ${name}`;
    case "completed":
      return `${name} downloaded`;
    case "error":
      return `The download of ${name} failed`;
    case "cancelled":
      return `The download of ${name} was cancelled; the partial file is kept`;
    default:
      return "No download running";
  }
}

function phaseWords(p) {
  if (p.status !== "downloading") return "–";
  const words = PHASE_WORDS[p.phase] || "Working";
  return p.phase === "retrying" && p.retries ? `${words} (retry ${p.retries})` : words;
}

function renderProgress(p) {
  const running = p.status === "downloading";
  $("dl-title").textContent = downloadTitle(p);
  const bar = $("dl-bar");
  bar.value = Number(p.progress || 0);
  bar.textContent = formatPercent(p.progress);
  const sizes = p.total_size
    ? ` (${formatBytes(p.downloaded_size)} of ${formatBytes(p.total_size)})`
    : "";
  $("dl-percent").textContent = p.status === "idle" ? "–" : formatPercent(p.progress) + sizes;
  $("dl-speed").textContent = running ? formatSpeed(p.speed) : "–";
  $("dl-eta").textContent = running ? formatEta(p.eta) : "–";
  $("dl-phase").textContent = phaseWords(p);
  const failure = $("dl-error");
  failure.textContent = p.status === "error" && p.error ? sentence(p.error) : "";
  failure.hidden = !failure.textContent;
}

// ---- the model list --------------------------------------------------------------------------

async function refreshModels() {
  try {
    const body = await api("GET", "/models/available");
    state.models = body.available_models;
    renderModels();
  } catch (error) {
    // A network failure while reconnecting is expected; the indicator already says so.
    if (error.status !== 0) reportFailure(error, "Could not read the model list");
  }
}

function button(text, className, onClick) {
  const node = document.createElement("button");
  node.type = "button";
  node.className = className;
  node.textContent = text;
  node.addEventListener("click", onClick);
  return node;
}

function makeCard(variant) {
  const item = document.createElement("li");
  item.className = "model";
  const title = document.createElement("h3");
  title.textContent = variant;
  title.id = `model-${variant.replace(/[^\w-]/g, "_")}`;
  item.setAttribute("aria-labelledby", title.id);
  const label = document.createElement("p");
  label.className = "muted";
  const meta = document.createElement("p");
  meta.className = "meta";
  const status = document.createElement("p");
  status.className = "model-state";
  const actions = document.createElement("div");
  actions.className = "actions";
  const card = {
    item,
    label,
    meta,
    status,
    download: button("Download", "primary", () => startDownload(variant)),
    cancel: button("Cancel", "danger", cancelDownload),
    load: button("Load", "secondary", () => loadModel(variant)),
  };
  card.cancel.setAttribute("aria-label", `Cancel the download of ${variant}`);
  card.load.setAttribute("aria-label", `Load ${variant}`);
  actions.append(card.download, card.cancel, card.load);
  item.append(title, label, meta, status, actions);
  return card;
}

function modelState(variant, model, running, loaded) {
  if (running) return `Downloading: ${formatPercent(state.progress.progress)}`;
  if (model.downloaded) return loaded ? "Downloaded, in use" : "Downloaded";
  if (model.partial_bytes > 0) {
    return `Partly downloaded: ${formatBytes(model.partial_bytes)} of ${formatBytes(model.size)}`;
  }
  return "Not downloaded";
}

// Updates the cards in place (creating missing ones) so a focused button keeps its focus.
function renderModels() {
  const list = $("models");
  const p = state.progress;
  const loadedVariant = state.loaded && state.loaded.model_variant;
  const loading = state.loaded && state.loaded.status === "loading";
  for (const [variant, model] of Object.entries(state.models)) {
    let card = state.cards.get(variant);
    if (!card) {
      card = makeCard(variant);
      state.cards.set(variant, card);
      list.append(card.item);
    }
    const running = p.status === "downloading" && p.model_variant === variant;
    const resumable = !model.downloaded && model.partial_bytes > 0;
    card.label.textContent = model.label || "";
    card.label.hidden = !model.label;
    card.meta.textContent = `${model.filename} · ${formatBytes(model.size)}`;
    card.status.textContent = modelState(variant, model, running, variant === loadedVariant);
    card.item.dataset.state = running ? "running" : model.downloaded ? "downloaded" : "missing";
    card.download.textContent = resumable ? "Resume" : "Download";
    card.download.setAttribute("aria-label", `${resumable ? "Resume" : "Download"} ${variant}`);
    card.download.hidden = running || model.downloaded;
    card.cancel.hidden = !running || p.phase === "loading";
    card.load.hidden = !model.downloaded || variant === loadedVariant;
    card.load.disabled = Boolean(loading);
    keepFocus(card);
  }
  for (const [variant, card] of state.cards) {
    if (!(variant in state.models)) {
      card.item.remove();
      state.cards.delete(variant);
    }
  }
}

// A keyboard user who pressed Download (or Cancel) would lose focus when that button hides:
// move it to the button that took its place.
function keepFocus(card) {
  const focused = document.activeElement;
  if (focused === card.download && card.download.hidden && !card.cancel.hidden) {
    card.cancel.focus();
  } else if (focused === card.cancel && card.cancel.hidden && !card.download.hidden) {
    card.download.focus();
  }
}

async function startDownload(variant) {
  showError("");
  try {
    const body = await api("POST", "/models/download", { model_variant: variant });
    showNotice(sentence(body.message));
  } catch (error) {
    reportFailure(error, `Could not download ${variant}`);
  }
}

async function cancelDownload() {
  showError("");
  try {
    const body = await api("POST", "/models/cancel-download");
    showNotice(sentence(body.message));
  } catch (error) {
    reportFailure(error, "Could not cancel the download");
  }
}

// ---- the loaded model --------------------------------------------------------------------------

async function refreshLoaded() {
  try {
    renderLoaded(await api("GET", "/models/loaded"));
  } catch (error) {
    if (error.status !== 0) reportFailure(error, "Could not read the loaded model");
  }
}

function onModelEvent(event) {
  const name = event.model_variant;
  if (event.event === "loading") showNotice(`Loading ${name}…`);
  if (event.event === "loaded") showNotice(`${name} is loaded and answers questions.`);
  if (event.event === "load_failed") {
    showError(`Loading ${name} failed: ${sentence(event.error || "unknown error")}`);
  }
  refreshLoaded();
}

function renderLoaded(loaded) {
  if (!loaded) return;
  state.loaded = loaded;
  const words = {
    none: "No model loaded",
    loading: `Loading ${loaded.loading_variant || ""}…`,
    ready: "Ready",
    error: "Load failed",
  };
  const name = $("loaded-name");
  name.textContent = loaded.model_variant || "";
  name.hidden = !loaded.model_variant; // the badge alone says "No model loaded"
  const badge = $("loaded-state");
  badge.textContent = words[loaded.status] || loaded.status;
  badge.dataset.status = loaded.status;
  let detail = "";
  if (loaded.status === "loading" && loaded.model_variant) {
    detail = `${loaded.model_variant} answers until the new model is ready.`;
  } else if (loaded.model_variant && loaded.loaded_at) {
    detail = `Loaded at ${new Date(loaded.loaded_at).toLocaleString()}.`;
  } else if (!loaded.model_variant) {
    detail = "Download a model, then press Load.";
  }
  $("loaded-detail").textContent = detail;
  const failure = $("loaded-error");
  failure.textContent = loaded.error ? `The last load failed: ${sentence(loaded.error)}` : "";
  failure.hidden = !loaded.error;
  renderModels();
}

async function loadModel(variant) {
  showError("");
  showNotice(`Loading ${variant}…`);
  try {
    const reply = await api("POST", "/models/load", { model_variant: variant });
    renderLoaded(reply.loaded_model); // beside the old app's fields
    showNotice(`${variant} is loaded and answers questions.`);
  } catch (error) {
    reportFailure(error, `Could not load ${variant}`);
  }
}

// ---- chat ----------------------------------------------------------------------------------------

// Reads server-sent events from a fetch body; calls onData with each `data:` payload.
async function readEvents(body, onData) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trimStart())
        .join("\n");
      if (data && onData(data) === false) {
        reader.cancel();
        return;
      }
    }
  }
}

async function onChatSubmit(event) {
  event.preventDefault();
  const text = $("chat-input").value.trim();
  if (!text) return;
  const answer = $("chat-answer");
  const send = $("chat-send");
  answer.hidden = false;
  answer.textContent = "";
  answer.setAttribute("aria-busy", "true");
  send.disabled = true;
  showError("");
  try {
    const response = await request("POST", "/v1/chat/completions", {
      messages: [{ role: "user", content: text }],
      max_tokens: 64,
      stream: true,
    });
    await readEvents(response.body, (data) => {
      if (data === "[DONE]") return false;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new ApiError(500, sentence(chunk.error.message));
      const delta = chunk.choices?.[0]?.delta?.content;
      if (delta) answer.append(delta); // a text node: the model's words are never parsed as HTML
      return true;
    });
    if (!answer.textContent) answer.textContent = "(The model answered with no text.)";
  } catch (error) {
    if (error instanceof ApiError) reportFailure(error, "The model could not answer");
    else showError("The connection to lawchatd was lost while the answer arrived.");
  } finally {
    answer.removeAttribute("aria-busy");
    send.disabled = false;
  }
}

// ---- network: the bandwidth cap and the download queue ----------------------------------------

function onNetworkMessage(message) {
  if (message.type === "bandwidth") renderCap(message);
  else if (message.type === "queue") renderQueue(message.downloads);
  else return false;
  return true;
}

function renderCap(status) {
  const rate = status.max_rate;
  const source = {
    override: "set here",
    schedule: "from the schedule",
    setting: "from the settings",
  }[status.source];
  const from = source ? ` (${source})` : "";
  $("cap-state").textContent = `Cap: ${rate ? formatSpeed(rate) : "unlimited"}${from}`;
  if (document.activeElement !== $("cap-input")) {
    $("cap-input").value = rate ? String(rate / 1e6) : "";
  }
}

function renderQueue(downloads) {
  const queued = downloads.filter((d) => d.status === "queued");
  const items = queued.map((entry) => {
    const item = document.createElement("li");
    item.textContent = `${entry.model_variant} · ${formatBytes(entry.total_size)} `;
    const remove = button("Remove", "secondary", () => removeQueued(entry.model_variant));
    remove.setAttribute("aria-label", `Remove ${entry.model_variant} from the queue`);
    item.append(remove);
    return item;
  });
  $("queue").replaceChildren(...items);
  $("queue-empty").hidden = queued.length > 0;
  const choices = Object.entries(state.models).filter(([, model]) => !model.downloaded);
  const select = $("queue-select");
  const chosen = select.value;
  select.replaceChildren(
    ...choices.map(([variant]) => new Option(variant, variant, false, variant === chosen)),
  );
}

async function onCapSubmit(event) {
  event.preventDefault();
  showError("");
  const text = $("cap-input").value.trim();
  const megabytes = text === "" ? 0 : Number(text);
  if (!Number.isFinite(megabytes) || megabytes < 0) {
    showError("The cap is a number of MB/s, or empty for unlimited.");
    return;
  }
  try {
    const status = await api("PUT", "/downloads/bandwidth", {
      max_rate: megabytes ? Math.round(megabytes * 1e6) : null,
    });
    renderCap(status);
    const rate = status.max_rate;
    showNotice(rate ? `Bandwidth capped at ${formatSpeed(rate)}.` : "Bandwidth unlimited.");
  } catch (error) {
    reportFailure(error, "Could not set the bandwidth cap");
  }
}

async function onQueueSubmit(event) {
  event.preventDefault();
  showError("");
  const variant = $("queue-select").value;
  if (!variant) return;
  try {
    const body = await api("POST", "/models/download", { model_variant: variant, queue: true });
    showNotice(sentence(body.message));
  } catch (error) {
    reportFailure(error, `Could not queue ${variant}`);
  }
}

async function removeQueued(variant) {
  showError("");
  try {
    const body = await api("DELETE", `/downloads/${encodeURIComponent(variant)}`);
    showNotice(sentence(body.message));
  } catch (error) {
    reportFailure(error, `Could not remove ${variant} from the queue`);
  }
}

// ---- start -----------------------------------------------------------------------------------

function startDashboard() {
  $("dashboard").hidden = false;
  $("change-key").hidden = false;
  setConnection("connecting", "Connecting…");
  state.backoff = BACKOFF_MIN_MS;
  openSocket();
}

function main() {
  $("key-form").addEventListener("submit", onKeySubmit);
  $("change-key").addEventListener("click", logOut);
  $("chat-form").addEventListener("submit", onChatSubmit);
  $("cap-form").addEventListener("submit", onCapSubmit);
  $("queue-form").addEventListener("submit", onQueueSubmit);
  // Ctrl/Cmd+Enter sends, as in most chat boxes; Enter alone makes a new line.
  $("chat-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("chat-form").requestSubmit();
  });
  window.addEventListener("online", reconnectNow);
  window.addEventListener("offline", () => {
    if (state.socket) state.socket.close(); // its close schedules nothing while offline
  });
  sessionStorage.removeItem("lawchatd.apiKey"); // where an older version kept the key
  checkAccess();
}

main();
