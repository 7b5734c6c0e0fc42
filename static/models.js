// The models panel: a card per catalog model (download, resume, cancel, load) and the loaded
// model above them, re-read from REST when an event says they changed.

import { api } from "./api.js";
import { formatBytes, formatPercent, sentence } from "./format.js";
import { $, button, reportFailure, showError, showNotice } from "./messages.js";
import { state } from "./state.js";

const cards = new Map(); // variant -> the DOM nodes of its card, kept so focus survives updates

export async function refreshModels() {
  try {
    const body = await api("GET", "/models/available");
    state.models = body.available_models;
    renderModels();
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
    verify: button("Verify", "secondary", () => verifyModel(variant)),
  };
  card.cancel.setAttribute("aria-label", `Cancel the download of ${variant}`);
  card.load.setAttribute("aria-label", `Load ${variant}`);
  card.verify.setAttribute("aria-label", `Hash ${variant} again to check it is intact`);
  actions.append(card.download, card.cancel, card.load, card.verify);
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
    card.verify.hidden = !model.downloaded || running;
    keepFocus(card);
  }
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

async function startDownload(variant) {
  showError("");
  try {
    const body = await api("POST", "/models/download", { model_variant: variant });
    showNotice(sentence(body.message));
  } catch (error) {
    reportFailure(error, `Could not download ${variant}`);
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
  if (event.event === "loaded") showNotice(`${name} is loaded and answers questions.`);
  if (event.event === "load_failed") {
    showError(`Loading ${name} failed: ${sentence(event.error || "unknown error")}`);
  }
  refreshLoaded();
}

// Renders the loaded-model card, then the model list (whose Load buttons depend on it).
export function renderLoaded(loaded) {
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
