// The network panel: the bandwidth cap and the download queue.

import { api } from "./api.js";
import { formatBytes, formatSpeed, sentence } from "./format.js";
import { $, button, reportFailure, showError, showNotice } from "./messages.js";
import { state } from "./state.js";

// A WebSocket message for this panel: true if it was one.
export function onNetworkMessage(message) {
  if (message.type === "bandwidth") renderCap(message);
  else if (message.type === "queue") renderQueue(message.downloads);
  else return false;
  return true;
}

export function renderCap(status) {
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

export function renderQueue(downloads) {
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
  state.queued = queued.map((entry) => entry.model_variant);
  renderQueueChoices();
}

// Only what can still be queued: not downloaded, not downloading, not queued already.
export function renderQueueChoices() {
  const p = state.progress;
  const running = p.status === "downloading" ? p.model_variant : null;
  const choices = Object.entries(state.models).filter(
    ([variant, model]) =>
      !model.downloaded && variant !== running && !state.queued.includes(variant),
  );
  const select = $("queue-select");
  const chosen = select.value;
  select.replaceChildren(
    ...choices.map(([variant]) => new Option(variant, variant, false, variant === chosen)),
  );
  $("queue-form").hidden = choices.length === 0;
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

export function setupNetwork() {
  $("cap-form").addEventListener("submit", onCapSubmit);
  $("queue-form").addEventListener("submit", onQueueSubmit);
}
