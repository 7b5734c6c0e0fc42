// The chat panel: one question to the loaded model, its answer streamed as it is written.

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

export function setupChat() {
  $("chat-form").addEventListener("submit", onChatSubmit);
  // Ctrl/Cmd+Enter sends, as in most chat boxes; Enter alone makes a new line.
  $("chat-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("chat-form").requestSubmit();
  });
}
