// What the page tells the user about their own actions, and the DOM helpers every panel uses.

export const $ = (id) => document.getElementById(id);

export function showNotice(text) {
  $("notice").textContent = text;
}

export function showError(text) {
  const box = $("error");
  box.textContent = text;
  box.hidden = !text;
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
