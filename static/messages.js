// What the page tells the user about their own actions, and the DOM helpers every panel uses.

import { sentence, splitDetail } from "./format.js";

export const $ = (id) => document.getElementById(id);

let noticesShown = 0;

export function showNotice(text) {
  noticesShown += 1;
  $("notice").textContent = text;
}

// How many notices were shown so far: a reply that arrives after the events it started (a
// small file downloads, verifies and fails to load before its POST returns) must not cover
// what they said.
export function noticeCount() {
  return noticesShown;
}

export function showError(text) {
  const box = $("error");
  setErrorText(box, text);
  box.hidden = !text;
}

// An error in words, with its technical detail (after " Detail: ") one click away.
export function setErrorText(node, text) {
  if (!text) {
    node.textContent = "";
    return;
  }
  const [words, detail] = splitDetail(text);
  node.textContent = detail ? sentence(words) : text;
  if (detail) {
    const more = document.createElement("details");
    more.className = "detail";
    const summary = document.createElement("summary");
    summary.textContent = "Technical detail";
    const code = document.createElement("code");
    code.textContent = detail;
    more.append(summary, code);
    node.append(" ", more);
  }
}

let onSessionEnded = showError;

// The login panel says what an ended session means (ask for the key again).
export function whenSessionEnds(handler) {
  onSessionEnded = handler;
}

// One place decides what a failure means: a refused key asks for the key, the rest is shown.
export function reportFailure(error, context) {
  if (error.status === 401) {
    onSessionEnded(error.message);
  } else {
    showError(context ? `${context}: ${error.message}` : error.message);
  }
}

export function button(text, className, onClick) {
  const node = document.createElement("button");
  node.type = "button";
  node.className = className;
  node.textContent = text;
  node.addEventListener("click", onClick);
  return node;
}
