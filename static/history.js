// The download history: the last runs (when, who, outcome, how long, how fast), newest first,
// re-read from REST when a download ends.

import { api } from "./api.js";
import { formatBytes, formatEta, formatSpeed } from "./format.js";
import { $, reportFailure } from "./messages.js";
import { state } from "./state.js";

const OUTCOME_WORDS = {
  completed: "Downloaded and verified",
  error: "Failed",
  cancelled: "Cancelled",
  interrupted: "Interrupted (lawchatd stopped; it resumes)",
};

export async function refreshHistory() {
  try {
    renderHistory((await api("GET", "/downloads/history")).downloads);
  } catch (error) {
    if (error.status !== 0) reportFailure(error, "Could not read the download history");
  }
}

function cell(text, outcome) {
  const td = document.createElement("td");
  td.textContent = text;
  if (outcome) td.dataset.outcome = outcome;
  return td;
}

export function renderHistory(runs) {
  // The newest outcome per model: a card can say its last download failed.
  state.lastOutcome = {};
  for (const run of runs) state.lastOutcome[run.variant] ??= run.outcome;
  const rows = runs.map((run) => {
    const tr = document.createElement("tr");
    const outcome = cell(OUTCOME_WORDS[run.outcome] || run.outcome, run.outcome);
    if (run.error) outcome.title = run.error;
    tr.append(
      cell(new Date(run.started_at * 1000).toLocaleString()),
      cell(run.variant),
      cell(run.started_by),
      outcome,
      cell(run.duration_seconds < 1 ? "under 1 s" : formatEta(run.duration_seconds)),
      cell(`${formatSpeed(run.average_speed)} (${formatBytes(run.bytes)})`),
    );
    return tr;
  });
  $("history-rows").replaceChildren(...rows);
  $("history-empty").hidden = rows.length > 0;
  $("history").hidden = rows.length === 0;
}
