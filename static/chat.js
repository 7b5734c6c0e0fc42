// The chat panel: a conversation with the loaded model, each answer streamed as it is written;
// Stop ends an answer early, and an answer cut at the length limit says so.

import { ApiError, request } from "./api.js";
import { sentence } from "./format.js";
import { $, reportFailure, showError } from "./messages.js";

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

const conversation = []; // earlier questions and answers, sent along with each new question
let stopping = null; // the AbortController of the answer being written

function turn(who, text) {
  const node = document.createElement("p");
  node.className = `turn ${who}`;
  node.textContent = text;
  return node;
}

async function onChatSubmit(event) {
  event.preventDefault();
  const text = $("chat-input").value.trim();
  if (!text) return;
  const log = $("chat-answer");
  const send = $("chat-send");
  const stop = $("chat-stop");
  log.hidden = false;
  const answer = turn("model", "");
  log.append(turn("you", text), answer);
  log.setAttribute("aria-busy", "true");
  send.disabled = true;
  stop.hidden = false;
  $("chat-cut").hidden = true;
  showError("");
  stopping = new AbortController();
  let finish = null;
  try {
    const response = await request(
      "POST",
      "/v1/chat/completions",
      {
        // No max_tokens: the answer may use the rest of the model's context.
        messages: [...conversation, { role: "user", content: text }],
        stream: true,
      },
      stopping.signal,
    );
    await readEvents(response.body, (data) => {
      if (data === "[DONE]") return false;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new ApiError(500, sentence(chunk.error.message));
      const delta = chunk.choices?.[0]?.delta?.content;
      if (delta) answer.append(delta); // a text node: the model's words are never parsed as HTML
      finish = chunk.choices?.[0]?.finish_reason ?? finish;
      return true;
    });
    if (!answer.textContent) answer.textContent = "(The model answered with no text.)";
    else conversation.push({ role: "user", content: text }, { role: "assistant", content: answer.textContent });
    $("chat-input").value = "";
    $("chat-new").hidden = false;
  } catch (error) {
    if (stopping.signal.aborted) answer.append(" (stopped)");
    else if (error instanceof ApiError) reportFailure(error, "The model could not answer");
    else showError("The connection to lawchatd was lost while the answer arrived.");
  } finally {
    $("chat-cut").hidden = finish !== "length";
    log.removeAttribute("aria-busy");
    send.disabled = false;
    stop.hidden = true;
    stopping = null;
  }
}

export function setupChat() {
  $("chat-form").addEventListener("submit", onChatSubmit);
  $("chat-stop").addEventListener("click", () => stopping && stopping.abort());
  $("chat-new").addEventListener("click", () => {
    if (stopping) stopping.abort();
    conversation.length = 0; // the model forgets what was asked before
    $("chat-answer").replaceChildren();
    $("chat-answer").hidden = true;
    $("chat-cut").hidden = true;
    $("chat-new").hidden = true;
  });
  // Ctrl/Cmd+Enter sends, as in most chat boxes; Enter alone makes a new line.
  $("chat-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("chat-form").requestSubmit();
  });
}
