// The models panel: a card per catalog model (download, resume, queue, cancel, load, delete)
// and the loaded model above them (unload, memory, context), re-read from REST when an event
// says they changed.

import { api } from "./api.js";
import { formatBytes, formatPercent, sentence } from "./format.js";
import { refreshHistory } from "./history.js";
import { renderQueueChoices } from "./network.js";
import {
  $,
  button,
  noticeCount,
  reportFailure,
  setErrorText,
  showError,
  showNotice,
} from "./messages.js";
import { state } from "./state.js";

const cards = new Map(); // variant -> the DOM nodes of its card, kept so focus survives updates

export async function refreshModels() {
  try {
    const body = await api("GET", "/models/available");
    state.models = body.available_models;
    state.disk = body.disk || null;
    renderModels();
    await refreshHistory();
    renderModels(); // the history says which model's last download failed
  } catch (error) {
    // A network failure while reconnecting is expected; the indicator already says so.
    if (error.status !== 0) reportFailure(error, "Could not read the model list");
  }
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
  const hint = document.createElement("p");
  hint.className = "hint";
  const actions = document.createElement("div");
  actions.className = "actions";
  const card = {
    item,
    label,
    meta,
    status,
    hint,
    download: button("Download", "primary", () => startDownload(variant)),
    cancel: button("Cancel", "danger", cancelDownload),
    load: button("Load", "secondary", () => loadModel(variant)),
    remove: button("Delete", "danger", () => deleteModel(variant)),
    verify: button("Verify", "secondary", () => verifyModel(variant)),
  };
  card.cancel.setAttribute("aria-label", `Cancel the download of ${variant}`);
  card.load.setAttribute("aria-label", `Load ${variant}`);
  card.remove.setAttribute("aria-label", `Delete ${variant}`);
  card.verify.setAttribute("aria-label", `Hash ${variant} again to check it is intact`);
  actions.append(card.download, card.cancel, card.load, card.verify, card.remove);
  item.append(title, label, meta, status, hint, actions);
  return card;
}

// What the card says, and its state for the colour: running, downloaded, failed or missing.
function modelState(variant, model, running, loaded) {
  const p = state.progress;
  if (running) return [`Downloading: ${formatPercent(p.progress)}`, "running"];
  const failedLoad = state.loadFailed && state.loadFailed.variant === variant;
  if (model.downloaded && failedLoad && !loaded) {
    return ["Downloaded, but it could not be loaded: delete it and download it again", "failed"];
  }
  if (model.downloaded) return [loaded ? "Downloaded, in use" : "Downloaded", "downloaded"];
  const queuedAt = state.queued.indexOf(variant);
  if (queuedAt >= 0) return [`Queued (number ${queuedAt + 1})`, "missing"];
  const lastFailed = state.lastOutcome[variant] === "error";
  if ((p.status === "error" && p.model_variant === variant) || lastFailed) {
    return ["Not downloaded: its last download failed (see the history)", "failed"];
  }
  return [partialWords(model), "missing"];
}

function partialWords(model) {
  if (model.partial_bytes > 0) {
    return `Partly downloaded: ${formatBytes(model.partial_bytes)} of ${formatBytes(model.size)}`;
  }
  return "Not downloaded";
}

function diskWords() {
  const d = state.disk;
  if (!d) return "";
  return `Models use ${formatBytes(d.models_bytes)}; ${formatBytes(d.free_bytes)} free in ${d.folder}.`;
}

// Updates the cards in place (creating missing ones) so a focused button keeps its focus.
export function renderModels() {
  const list = $("models");
  const p = state.progress;
  const loadedVariant = state.loaded && state.loaded.model_variant;
  const loading = state.loaded && state.loaded.status === "loading";
  for (const [variant, model] of Object.entries(state.models)) {
    let card = cards.get(variant);
    if (!card) {
      card = makeCard(variant);
      cards.set(variant, card);
      list.append(card.item);
    }
    const running = p.status === "downloading" && p.model_variant === variant;
    const busy = p.status === "downloading" && !running; // another model downloads
    const resumable = !model.downloaded && model.partial_bytes > 0;
    const queued = state.queued.includes(variant);
    const failedLoad = state.loadFailed && state.loadFailed.variant === variant;
    card.label.textContent = model.label || "";
    card.label.hidden = !model.label;
    card.meta.textContent = `${model.filename} · ${formatBytes(model.size)}`;
    const [words, kind] = modelState(variant, model, running, variant === loadedVariant);
    card.status.textContent = words;
    card.item.dataset.state = kind;
    // Before a download: what happens when it completes (LAWCHATD_AUTOLOAD).
    card.hint.textContent = model.downloaded || running ? "" : onDownloadWords(model);
    card.hint.hidden = !card.hint.textContent;
    const verb = busy ? "Add to queue" : resumable ? "Resume" : "Download";
    card.download.textContent = verb;
    card.download.setAttribute("aria-label", `${verb === "Add to queue" ? "Queue" : verb} ${variant}`);
    card.download.hidden = running || model.downloaded || queued;
    card.cancel.hidden = !running || p.phase === "loading";
    card.load.hidden = !model.downloaded || variant === loadedVariant || failedLoad;
    card.load.disabled = Boolean(loading);
    card.remove.hidden = !model.downloaded;
    card.verify.hidden = !model.downloaded || running;
    keepFocus(card);
  }
  $("disk").textContent = diskWords();
  renderQueueChoices();
  for (const [variant, card] of cards) {
    if (!(variant in state.models)) {
      card.item.remove();
      cards.delete(variant);
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

function onDownloadWords(model) {
  return model.on_download === "keep"
    ? "When downloaded it stays on disk: the model in use keeps answering."
    : "When downloaded it is loaded and answers questions.";
}

async function startDownload(variant) {
  showError("");
  // While another model downloads, the button queues this one behind it.
  const queue = state.progress.status === "downloading";
  const shown = noticeCount();
  try {
    const body = await api("POST", "/models/download", { model_variant: variant, queue });
    if (noticeCount() === shown) showNotice(sentence(body.message));
  } catch (error) {
    reportFailure(error, `Could not download ${variant}`);
  }
}

async function deleteModel(variant) {
  showError("");
  if (!window.confirm(`Delete ${variant} from the disk? It can be downloaded again.`)) return;
  try {
    const body = await api("DELETE", `/models/${encodeURIComponent(variant)}`);
    showNotice(sentence(body.message));
    if (state.loadFailed && state.loadFailed.variant === variant) state.loadFailed = null;
    refreshModels();
  } catch (error) {
    reportFailure(error, `Could not delete ${variant}`);
  }
}

// Hashes the file again now (POST /models/verify): a file changed behind a restored mtime
// stops counting as downloaded.
async function verifyModel(variant) {
  showError("");
  showNotice(`Checking ${variant}…`);
  try {
    const body = await api("POST", "/models/verify", { model_variant: variant });
    if (body.result === "verified") showNotice(sentence(body.message));
    else showError(sentence(body.message));
    await refreshModels();
  } catch (error) {
    reportFailure(error, `Could not verify ${variant}`);
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

// ---- the loaded model ------------------------------------------------------------------------

async function refreshLoaded() {
  try {
    renderLoaded(await api("GET", "/models/loaded"));
  } catch (error) {
    if (error.status !== 0) reportFailure(error, "Could not read the loaded model");
  }
}

export function onModelEvent(event) {
  const name = event.model_variant;
  if (event.event === "loading") showNotice(`Loading ${name}…`);
  if (event.event === "loaded") {
    if (state.loadFailed && state.loadFailed.variant === name) state.loadFailed = null;
    showNotice(`${name} is loaded and answers questions.`);
  }
  if (event.event === "unloaded") showNotice(`${name} was unloaded; it no longer answers.`);
  if (event.event === "load_failed") {
    state.loadFailed = { variant: name, error: event.error };
    showNotice("");
    showError(`Loading ${name} failed: ${event.error || "unknown error"}`);
  }
  refreshLoaded();
  refreshModels(); // disk use and what a download would do change with the loaded model
}

// Renders the loaded-model card, then the model list (whose Load buttons depend on it).
export function renderLoaded(loaded) {
  if (!loaded) return;
  state.loaded = loaded;
  const words = {
    none: "No model loaded",
    idle: "Asleep (the next question loads it)",
    loading: `Loading ${loaded.loading_variant || ""}…`,
    ready: "Ready",
    error: "Load failed",
  };
  const name = $("loaded-name");
  name.textContent = loaded.model_variant || "";
  name.hidden = !loaded.model_variant; // the badge alone says "No model loaded"
  const badge = $("loaded-state");
  const status = loaded.status === "ready" && loaded.idle ? "idle" : loaded.status;
  badge.textContent = words[status] || status;
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
  const answering = Boolean(loaded.model_variant);
  $("loaded-facts").hidden = !answering;
  $("loaded-memory").textContent = loaded.memory_usage ? formatBytes(loaded.memory_usage) : "–";
  $("loaded-context").textContent = loaded.n_ctx ? `${loaded.n_ctx} tokens` : "–";
  $("loaded-parallel").textContent = loaded.parallel ? `${loaded.parallel} questions` : "–";
  const unload = $("unload");
  unload.hidden = !answering;
  unload.disabled = loaded.status === "loading";
  unload.setAttribute("aria-label", `Unload ${loaded.model_variant || ""}`.trim());
  const failure = $("loaded-error");
  setErrorText(failure, loaded.error ? `The last load failed: ${loaded.error}` : "");
  failure.hidden = !loaded.error;
  renderModels();
}

async function unloadModel() {
  const variant = state.loaded && state.loaded.model_variant;
  if (!variant) return;
  showError("");
  try {
    const body = await api("POST", "/models/unload", { model_variant: variant });
    showNotice(sentence(body.message));
    refreshLoaded();
  } catch (error) {
    reportFailure(error, `Could not unload ${variant}`);
  }
}

export function setupModels() {
  $("unload").addEventListener("click", unloadModel);
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
