// Who is logged in, and the admin panel of the firm's keys.
//
// GET /session says the person's name and role. The page then marks <body data-role=...>: the
// style sheet hides what the role may not do (admin actions for `user` and `viewer`, the chat
// for `viewer`); the daemon refuses those anyway (403), this only keeps the page honest. An
// admin also gets the "People and keys" panel: list (with each key's chat usage), add (the
// new key is shown once), revoke.

import { api } from "./api.js";
import { $, button, reportFailure, showNotice } from "./messages.js";

const ROLE_WORDS = {
  admin: "administrator",
  user: "chat and read-only",
  viewer: "read-only",
};

export async function setupPeople() {
  let me;
  try {
    me = await api("GET", "/session");
  } catch (error) {
    reportFailure(error, "Who is logged in");
    return;
  }
  document.body.dataset.role = me.role;
  showWho(me);
  if (me.role === "admin") {
    ensurePanel();
    await refreshKeys();
  } else {
    $("people")?.remove();
  }
}

function showWho(me) {
  let who = $("who");
  if (!who) {
    who = document.createElement("p");
    who.id = "who";
    who.className = "who muted";
    $("change-key").before(who);
  }
  who.textContent = `${me.name} (${ROLE_WORDS[me.role] || me.role})`;
}

function ensurePanel() {
  if ($("people")) return;
  const section = document.createElement("section");
  section.id = "people";
  section.className = "card wide admin-only";
  section.setAttribute("aria-labelledby", "people-heading");
  const heading = document.createElement("h2");
  heading.id = "people-heading";
  heading.textContent = "People and keys";
  const list = document.createElement("ul");
  list.id = "people-list";
  list.className = "people";
  const form = document.createElement("form");
  form.id = "people-form";
  const name = input("people-name", "Name", "text");
  const role = document.createElement("select");
  role.id = "people-role";
  role.setAttribute("aria-label", "Role");
  for (const value of ["user", "viewer", "admin"]) role.append(new Option(value, value));
  const add = document.createElement("button");
  add.type = "submit";
  add.textContent = "Add key";
  const row = document.createElement("div");
  row.className = "row";
  row.append(name, role, add);
  const made = document.createElement("p");
  made.id = "people-new-key";
  made.setAttribute("role", "status");
  made.hidden = true;
  form.append(row, made);
  form.addEventListener("submit", (event) => addKey(event, name, role, made));
  section.append(heading, list, form);
  $("dashboard").append(section);
}

function input(id, label, type) {
  const node = document.createElement("input");
  node.id = id;
  node.type = type;
  node.required = true;
  node.autocomplete = "off";
  node.setAttribute("aria-label", label);
  node.placeholder = label;
  return node;
}

async function refreshKeys() {
  let answer;
  try {
    answer = await api("GET", "/keys");
  } catch (error) {
    reportFailure(error, "Listing the keys");
    return;
  }
  const usage = await usageByName();
  const list = $("people-list");
  list.replaceChildren();
  for (const key of answer.keys) {
    if (key.state === "revoked") continue;
    const item = document.createElement("li");
    item.dataset.name = key.name;
    const text = document.createElement("span");
    const used = key.last_used ? `last used ${key.last_used}` : "never used";
    const state = key.state === "live" ? "" : ` · ${key.state}`;
    const spent = usage[key.name];
    const chats = spent ? ` · ${spent.requests} chats, ${spent.total_tokens} tokens` : "";
    text.textContent = `${key.name} · ${key.role} · ${used}${state}${chats}`;
    item.append(text, button("Revoke", "danger", () => revoke(key.name)));
    list.append(item);
  }
}

// Chat usage per key since the daemon started (GET /keys/usage); none when it cannot say.
async function usageByName() {
  try {
    const answer = await api("GET", "/keys/usage");
    return Object.fromEntries(answer.keys.map((entry) => [entry.name, entry]));
  } catch {
    return {};
  }
}

async function addKey(event, name, role, made) {
  event.preventDefault();
  try {
    const answer = await api("POST", "/keys", { name: name.value.trim(), role: role.value });
    made.textContent = `Key for ${answer.name} (shown once, give it to them now): ${answer.key}`;
    made.hidden = false;
    name.value = "";
  } catch (error) {
    reportFailure(error, "Adding a key");
  }
  await refreshKeys();
}

async function revoke(name) {
  try {
    await api("DELETE", `/keys/${encodeURIComponent(name)}`);
    showNotice(`The key of ${name} was revoked.`);
  } catch (error) {
    reportFailure(error, `Revoking the key of ${name}`);
  }
  await refreshKeys();
}
