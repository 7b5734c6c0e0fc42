// The download panel: the running download's progress, step, speed and time left.

import { formatBytes, formatEta, formatPercent, formatSpeed, sentence } from "./format.js";
import { $, setErrorText, showNotice } from "./messages.js";
import { refreshModels, renderModels } from "./models.js";
import { state } from "./state.js";

const PHASE_WORDS = {
  resolving: "Asking the Hub for the file",
  downloading: "Downloading",
  retrying: "Connection problem, retrying",
  verifying: "Checking the file (size and sha256)",
  loading: "Loading the model",
};

export function applyProgress(progress) {
  const before = state.progress;
  state.progress = progress;
  renderProgress(progress);
  const changed =
    before.status !== progress.status || before.model_variant !== progress.model_variant;
  if (progress.status !== "downloading") {
    // Finished, failed or cancelled (or cleaned up): what is on disk changed. The notice is
    // replaced every time, so "started" never stays beside "failed".
    if (changed || progress.status !== "idle") refreshModels();
    // An end may arrive alone (a fast failure coalesced with its start): it still replaces
    // the "started" notice.
    if (changed || progress.status === "error" || progress.status === "completed") {
      announceOutcome(progress);
    }
  } else {
    renderModels();
  }
}

function announceOutcome(progress) {
  const name = progress.model_variant;
  const failedLoad = state.loadFailed && state.loadFailed.variant === name;
  if (progress.status === "completed" && failedLoad) {
    showNotice(`${name} is downloaded and verified, but it could not be loaded (see above).`);
  } else if (progress.status === "completed") {
    showNotice(`${name} is downloaded and verified.`);
  }
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
      return p.downloaded_size > 0
        ? `The download of ${name} was cancelled; the partial file is kept`
        : `The download of ${name} was cancelled`; // cleaned up: nothing is kept
    default:
      return "No download running";
  }
}

function phaseWords(p) {
  if (p.status !== "downloading") return "–";
  const words = PHASE_WORDS[p.phase] || "Working";
  return p.phase === "retrying" && p.retries ? `${words} (retry ${p.retries})` : words;
}

// While the daemon cannot be reached nothing here is live: no speed or time left is shown.
export function renderProgress(p) {
  const live = document.body.dataset.connection === "connected";
  const running = p.status === "downloading" && live;
  const lost = ["reconnecting", "disconnected"].includes(document.body.dataset.connection);
  $("dl-title").textContent = downloadTitle(p) + (lost ? " (last known state)" : "");
  const bar = $("dl-bar");
  bar.value = Number(p.progress || 0);
  bar.textContent = formatPercent(p.progress);
  const sizes = p.total_size
    ? ` (${formatBytes(p.downloaded_size)} of ${formatBytes(p.total_size)})`
    : "";
  $("dl-percent").textContent = p.status === "idle" ? "–" : formatPercent(p.progress) + sizes;
  $("dl-speed").textContent = running ? formatSpeed(p.speed) : "–";
  $("dl-eta").textContent = running ? formatEta(p.eta) : "–";
  $("dl-phase").textContent = live ? phaseWords(p) : "Not connected";
  const failure = $("dl-error");
  setErrorText(failure, p.status === "error" && p.error ? sentence(p.error) : "");
  failure.hidden = !failure.textContent;
}
