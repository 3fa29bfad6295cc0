// The rooms and the chat: /api/rooms for the list, /api/chat for the answers.
//
// A new chat gets a random room id here (crypto.getRandomValues) and every turn is sent
// with X-Room-Id, so the proxy files the turns of one chat in one room whatever the
// history looks like; continuing a room sends its stored turns as the history. The
// answer is read as it streams (NDJSON), rendered as sanitised Markdown, with thinking
// apart and collapsed. Stop aborts the request: the proxy then closes the backend's
// stream, which stops the model. A 503 with Retry-After (the model's group is full) is
// waited out and retried, with a countdown, until it goes through or the user stops.

import { ApiError, errorOf, ndjson, retryAfterOf } from "./api.js";
import { formatTime, h, retext } from "./dom.js";
import { t } from "./i18n.js";
import { renderMarkdown } from "./markdown.js";

const MODEL_KEY = "olbproxy.model";
const TITLE_MAX = 60; // as the proxy titles a room from its first message
const ROOMS_PAGE = 50;

function newRoomId() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function sleep(seconds, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, seconds * 1000);
    signal.addEventListener(
      "abort",
      () => {
        clearTimeout(timer);
        reject(new DOMException("stopped", "AbortError"));
      },
      { once: true },
    );
  });
}

export class ChatView {
  constructor(app) {
    this.app = app;
    this.reset();
  }

  // Forget everything (logout): rooms, the open chat, a stream under way.
  reset() {
    if (this.controller) this.controller.abort();
    this.controller = null;
    this.rooms = [];
    this.nextCursor = null;
    this.models = [];
    this.modelsLoaded = false;
    this.roomId = null;
    this.roomTitle = "";
    this.messages = [];
    this.el = null;
  }

  get api() {
    return this.app.api;
  }

  // -- mounting ----------------------------------------------------------------------

  mount(el, roomId) {
    this.el = el;
    this.build();
    this.renderRooms();
    this.renderMessages();
    this.loadModels();
    this.loadRooms();
    if (roomId) this.show(roomId);
    else if (this.roomId) history.replaceState(null, "", `#/chat/${this.roomId}`);
    // Ready to type on a desktop; on a phone the keyboard would cover the page at once.
    if (!roomId && window.matchMedia("(min-width: 721px)").matches) this.focusPrompt();
  }

  unmount() {
    this.el = null;
    this.dom = null;
  }

  // The address names a room (or none: a new chat).
  show(roomId) {
    if (roomId && roomId !== this.roomId) this.openRoom(roomId);
    else if (!roomId && this.roomId && !this.controller) this.newChat(false);
    this.markActiveRoom();
    this.closeRoomsPanel();
  }

  build() {
    const d = {};
    d.roomList = h("ul", { class: "room-list", "aria-labelledby": "rooms-heading" });
    d.more = h("button", { type: "button", class: "link more", t: "loadMore", hidden: true, onclick: () => this.loadRooms(true) });
    d.rooms = h(
      "aside",
      { class: "rooms", id: "rooms-panel" },
      h(
        "div",
        { class: "rooms-head" },
        h("h2", { id: "rooms-heading", t: "rooms" }),
        h("button", { type: "button", class: "primary new-chat", t: "newChat", onclick: () => this.newChat(true) }),
      ),
      d.roomList,
      d.more,
    );
    d.model = h("select", { id: "model", class: "model", onchange: () => this.chooseModel(d.model.value) });
    d.toggle = h("button", {
      type: "button",
      class: "rooms-toggle",
      t: "rooms",
      "aria-controls": "rooms-panel",
      "aria-expanded": "false",
      onclick: () => this.toggleRoomsPanel(),
    });
    d.title = h("h2", { class: "room-title" });
    d.messages = h("div", { class: "messages", role: "log", "aria-live": "polite", tAria: "conversation" });
    d.prompt = h("textarea", {
      id: "prompt",
      rows: "2",
      tPlaceholder: "promptPlaceholder",
      onkeydown: (e) => this.keydown(e),
    });
    d.send = h("button", { type: "submit", class: "primary send", t: "send" });
    d.stop = h("button", { type: "button", class: "danger stop", t: "stop", hidden: true, onclick: () => this.stop() });
    d.composer = h(
      "form",
      { class: "composer", onsubmit: (e) => { e.preventDefault(); this.send(); } },
      h("label", { for: "prompt", class: "visually-hidden", t: "prompt" }),
      d.prompt,
      h("div", { class: "composer-buttons" }, d.send, d.stop),
    );
    d.notice = h("p", { class: "chat-notice", role: "status" });
    d.layout = h(
      "div",
      { class: "chat-layout" },
      d.rooms,
      h(
        "section",
        { class: "chat" },
        h(
          "div",
          { class: "chat-head" },
          d.toggle,
          h("label", { for: "model", class: "model-label", t: "model" }),
          d.model,
          d.title,
        ),
        d.notice,
        d.messages,
        d.composer,
        h("p", { class: "hint composer-hint", t: "enterHint" }),
      ),
    );
    this.dom = d;
    this.el.replaceChildren(d.layout);
    this.renderModels();
    this.renderTitle();
    this.setStreaming(Boolean(this.controller));
  }

  languageChanged() {
    // Texts built from data (times, titles) follow the language on the next render.
    this.renderRooms();
    this.renderTitle();
  }

  toggleRoomsPanel() {
    if (!this.dom) return;
    const open = !this.dom.layout.classList.contains("show-rooms");
    this.dom.layout.classList.toggle("show-rooms", open);
    this.dom.toggle.setAttribute("aria-expanded", String(open));
  }

  closeRoomsPanel() {
    if (!this.dom) return;
    this.dom.layout.classList.remove("show-rooms");
    this.dom.toggle.setAttribute("aria-expanded", "false");
  }

  say(key, params, kind = "error") {
    if (!this.dom) return;
    this.dom.notice.className = `chat-notice ${kind}`;
    if (key) retext(this.dom.notice, key, params);
    else {
      delete this.dom.notice.dataset.i18n;
      this.dom.notice.replaceChildren();
    }
  }

  // -- models --------------------------------------------------------------------------

  async loadModels() {
    try {
      const data = await this.api.get("api/tags");
      // Only what can chat: embedding-only models answer /api/chat with 400.
      this.models = (data.models || []).filter(
        (m) => !Array.isArray(m.capabilities) || m.capabilities.includes("completion"),
      );
    } catch (error) {
      if (error.status !== 401) this.say("errorGeneric", { message: error.message });
      return;
    }
    this.modelsLoaded = true;
    const remembered = localStorage.getItem(MODEL_KEY);
    if (!this.model || !this.models.some((m) => m.name === this.model)) {
      const known = this.models.find((m) => m.name === remembered);
      this.model = (known || this.models[0] || {}).name || null;
    }
    this.renderModels();
  }

  renderModels() {
    if (!this.dom) return;
    const select = this.dom.model;
    select.replaceChildren(...this.models.map((m) => h("option", { value: m.name, text: m.name })));
    select.disabled = this.models.length === 0;
    if (this.model) select.value = this.model;
    if (this.modelsLoaded && this.models.length === 0) this.say("noModels");
  }

  chooseModel(name) {
    this.model = name;
    localStorage.setItem(MODEL_KEY, name);
  }

  thinks(name) {
    const model = this.models.find((m) => m.name === name);
    return Boolean(model && Array.isArray(model.capabilities) && model.capabilities.includes("thinking"));
  }

  // -- rooms ---------------------------------------------------------------------------

  async loadRooms(more = false) {
    const query = new URLSearchParams({ limit: String(ROOMS_PAGE) });
    if (more && this.nextCursor) query.set("cursor", this.nextCursor);
    let data;
    try {
      data = await this.api.get(`api/rooms?${query}`);
    } catch (error) {
      if (error.status !== 401) this.say("errorGeneric", { message: error.message });
      return;
    }
    if (more) {
      const seen = new Set(this.rooms.map((r) => r.id));
      this.rooms.push(...data.rooms.filter((r) => !seen.has(r.id)));
    } else {
      // A room this page just opened may not be written yet: keep it until it is.
      const listed = new Set(data.rooms.map((r) => r.id));
      const pending = this.rooms.filter((r) => r.pending && !listed.has(r.id));
      this.rooms = [...pending, ...data.rooms];
    }
    this.nextCursor = data.next_cursor;
    this.renderRooms();
  }

  renderRooms() {
    if (!this.dom) return;
    this.dom.roomList.replaceChildren(...this.rooms.map((room) => this.roomItem(room)));
    if (this.rooms.length === 0) {
      this.dom.roomList.append(h("li", { class: "empty", t: "noRooms" }));
    }
    this.dom.more.hidden = !this.nextCursor;
  }

  roomItem(room, mode = "normal") {
    const item = h("li", { class: room.id === this.roomId ? "room active" : "room", "data-room": room.id });
    const title = room.title || t("untitled");
    if (mode === "rename") {
      const input = h("input", { value: title, tAria: "newName", maxlength: "200" });
      const form = h(
        "form",
        { class: "room-edit", onsubmit: (e) => { e.preventDefault(); this.rename(room, input.value); } },
        input,
        h("button", { type: "submit", class: "small primary", t: "save" }),
        h("button", { type: "button", class: "small", t: "cancel", onclick: () => this.renderRooms() }),
      );
      input.addEventListener("keydown", (e) => {
        if (e.key === "Escape") this.renderRooms();
      });
      item.append(form);
      queueMicrotask(() => input.select());
      return item;
    }
    if (mode === "delete") {
      const confirm = h("button", { type: "button", class: "small danger", t: "delete", onclick: () => this.remove(room) });
      item.append(
        h(
          "div",
          { class: "room-confirm", role: "alertdialog", "aria-label": title },
          h("span", { t: ["confirmDelete", { title }] }),
          confirm,
          h("button", { type: "button", class: "small", t: "cancel", onclick: () => this.renderRooms() }),
        ),
      );
      queueMicrotask(() => confirm.focus());
      return item;
    }
    item.append(
      h(
        "a",
        { class: "room-open", href: `#/chat/${encodeURIComponent(room.id)}`, "aria-current": room.id === this.roomId ? "page" : null },
        h("span", { class: "room-name", text: title }),
        h("small", { class: "room-time", text: formatTime(room.updated_at) }),
      ),
      h("button", { type: "button", class: "icon rename", text: "✎", tAria: "rename", tTitle: "rename", onclick: () => item.replaceWith(this.roomItem(room, "rename")) }),
      h("button", { type: "button", class: "icon remove", text: "✕", tAria: "delete", tTitle: "delete", onclick: () => item.replaceWith(this.roomItem(room, "delete")) }),
    );
    return item;
  }

  markActiveRoom() {
    if (!this.dom) return;
    for (const item of this.dom.roomList.querySelectorAll("li.room")) {
      const active = item.dataset.room === this.roomId;
      item.classList.toggle("active", active);
      const link = item.querySelector("a.room-open");
      if (link) {
        if (active) link.setAttribute("aria-current", "page");
        else link.removeAttribute("aria-current");
      }
    }
  }

  async rename(room, raw) {
    const title = raw.replace(/\s+/g, " ").trim();
    if (!title) return this.renderRooms();
    try {
      const renamed = await this.api.call("PATCH", `api/rooms/${encodeURIComponent(room.id)}`, { title });
      Object.assign(room, renamed, { pending: false });
      if (room.id === this.roomId) this.roomTitle = renamed.title;
    } catch (error) {
      if (error.status === 404 && room.pending) {
        this.say("notSavedYet");
      } else if (error.status !== 401) {
        this.say("errorGeneric", { message: error.message });
      }
    }
    this.renderRooms();
    this.renderTitle();
  }

  async remove(room) {
    if (room.id === this.roomId && this.controller) this.controller.abort();
    try {
      await this.api.call("DELETE", `api/rooms/${encodeURIComponent(room.id)}`);
    } catch (error) {
      if (error.status !== 404) {
        if (error.status !== 401) this.say("errorGeneric", { message: error.message });
        return this.renderRooms();
      }
    }
    this.rooms = this.rooms.filter((r) => r.id !== room.id);
    this.renderRooms();
    if (room.id === this.roomId) this.newChat(true);
  }

  async openRoom(roomId) {
    if (this.controller) this.controller.abort();
    this.roomId = roomId;
    this.messages = [];
    const known = this.rooms.find((r) => r.id === roomId);
    this.roomTitle = known ? known.title : "";
    this.renderMessages();
    this.renderTitle();
    this.say("loading", null, "info");
    const turns = [];
    let room = null;
    let cursor = null;
    try {
      do {
        const query = new URLSearchParams({ limit: "500" });
        if (cursor) query.set("cursor", cursor);
        const data = await this.api.get(`api/rooms/${encodeURIComponent(roomId)}/messages?${query}`);
        room = data.room;
        turns.push(...data.messages);
        cursor = data.next_cursor;
      } while (cursor && this.roomId === roomId);
    } catch (error) {
      if (this.roomId !== roomId) return;
      if (error.status === 404 || error.status === 403) {
        this.newChat(false);
        history.replaceState(null, "", "#/chat");
        return this.say("roomGone");
      }
      if (error.status !== 401) this.say("errorGeneric", { message: error.message });
      return;
    }
    if (this.roomId !== roomId) return; // another room was opened meanwhile
    this.say(null);
    this.roomTitle = room.title;
    if (room.model && this.models.some((m) => m.name === room.model)) {
      this.model = room.model;
      if (this.dom) this.dom.model.value = room.model;
    }
    this.messages = [];
    for (const turn of turns) {
      if (turn.input !== null && turn.input !== undefined) {
        this.messages.push({ role: turn.input_role || "user", content: turn.input });
      }
      const answer = turn.answer || { content: "", thinking: "" };
      if (answer.content || answer.thinking || turn.status !== "done") {
        this.messages.push({
          role: "assistant",
          model: turn.model,
          content: answer.content || "",
          thinking: answer.thinking || "",
          state: { done: "done", cancelled: "stopped" }[turn.status] || "error",
          error: turn.error,
        });
      }
    }
    this.renderMessages();
    this.renderTitle();
    this.markActiveRoom();
    this.focusPrompt();
  }

  newChat(focus) {
    if (this.controller) this.controller.abort();
    this.roomId = null;
    this.roomTitle = "";
    this.messages = [];
    this.say(null);
    this.renderMessages();
    this.renderTitle();
    this.markActiveRoom();
    this.closeRoomsPanel();
    if (location.hash !== "#/chat") history.pushState(null, "", "#/chat");
    if (focus) this.focusPrompt();
  }

  renderTitle() {
    if (!this.dom) return;
    if (this.roomTitle) {
      delete this.dom.title.dataset.i18n;
      this.dom.title.textContent = this.roomTitle;
    } else {
      retext(this.dom.title, "newChat");
    }
  }

  focusPrompt() {
    if (this.dom) this.dom.prompt.focus();
  }

  // -- messages --------------------------------------------------------------------------

  renderMessages() {
    if (!this.dom) return;
    this.dom.messages.replaceChildren(...this.messages.map((m) => this.messageElement(m)));
    if (this.messages.length === 0) {
      this.dom.messages.append(h("p", { class: "empty-chat", t: "emptyChat" }));
    }
    this.scrollDown(true);
  }

  messageElement(message) {
    if (message.role !== "assistant") {
      message.el = h(
        "article",
        { class: `msg ${message.role === "user" ? "user" : "other"}` },
        h("div", { class: "msg-role", t: message.role === "user" ? "you" : "tool" }),
        // What the user typed is shown as typed: text, never markup.
        h("div", { class: "msg-text", text: message.content }),
      );
      return message.el;
    }
    const parts = {
      summary: h("summary", { t: "thinking" }),
      thinking: h("div", { class: "thinking-text" }),
      content: h("div", { class: "md msg-content" }),
      status: h("div", { class: "msg-status" }),
    };
    parts.details = h("details", { class: "thinking", hidden: true }, parts.summary, parts.thinking);
    message.parts = parts;
    message.el = h(
      "article",
      { class: "msg assistant" },
      h("div", { class: "msg-role", text: message.model || "" }),
      parts.details,
      parts.content,
      parts.status,
    );
    this.paint(message);
    return message.el;
  }

  // Brings an assistant message's element up to date with its state.
  paint(message) {
    const parts = message.parts;
    if (!parts) return;
    parts.details.hidden = !message.thinking;
    parts.thinking.textContent = message.thinking || "";
    retext(parts.summary, message.state === "streaming" && !message.content ? "thinkingNow" : "thinking");
    renderMarkdown(parts.content, message.content);
    const status = [];
    if (message.state === "waiting") {
      status.push(h("span", { class: "spinner", "aria-hidden": "true" }));
      status.push(h("span", message.retryIn ? { t: ["groupFull", { s: message.retryIn }] } : { t: "waiting" }));
    } else if (message.state === "stopped") {
      status.push(h("span", { class: "stopped", t: "stopped" }));
    } else if (message.state === "error") {
      status.push(h("span", { class: "error", t: ["answerFailed", { message: message.error || "" }] }));
    }
    parts.status.replaceChildren(...status);
    message.el.setAttribute("aria-busy", String(message.state === "waiting" || message.state === "streaming"));
    message.el.dataset.state = message.state;
  }

  // Repaints at most once a frame while tokens pour in.
  schedulePaint(message) {
    if (message.painting) return;
    message.painting = true;
    requestAnimationFrame(() => {
      message.painting = false;
      const stick = this.nearBottom();
      this.paint(message);
      this.scrollDown(stick);
    });
  }

  nearBottom() {
    if (!this.dom) return false;
    const box = this.dom.messages;
    return box.scrollHeight - box.scrollTop - box.clientHeight < 80;
  }

  scrollDown(really) {
    if (this.dom && really) this.dom.messages.scrollTop = this.dom.messages.scrollHeight;
  }

  // -- sending -----------------------------------------------------------------------------

  keydown(event) {
    // Enter sends, Shift+Enter is a new line; Enter that ends a Korean (IME) composition
    // only ends the composition.
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing && event.keyCode !== 229) {
      event.preventDefault();
      this.send();
    }
  }

  setStreaming(on) {
    if (!this.dom) return;
    this.dom.send.hidden = on;
    this.dom.stop.hidden = !on;
    this.dom.messages.setAttribute("aria-busy", String(on));
  }

  stop() {
    if (this.controller) this.controller.abort();
  }

  history() {
    const history = [];
    for (const m of this.messages) {
      if (m.role !== "assistant") history.push({ role: m.role, content: m.content });
      else if (m.content) history.push({ role: "assistant", content: m.content });
    }
    return history;
  }

  async send() {
    if (!this.dom || this.controller) return;
    const text = this.dom.prompt.value.trim();
    if (!text) return;
    if (!this.model) return this.say("noModels");
    this.say(null);
    if (!this.roomId) {
      this.roomId = newRoomId();
      history.replaceState(null, "", `#/chat/${this.roomId}`);
    }
    const roomId = this.roomId;
    const model = this.model;
    const messages = [...this.history(), { role: "user", content: text }];
    const asked = { role: "user", content: text };
    const answer = { role: "assistant", model, content: "", thinking: "", state: "waiting" };
    if (this.messages.length === 0) this.dom.messages.replaceChildren();
    this.messages.push(asked, answer);
    this.dom.messages.append(this.messageElement(asked), this.messageElement(answer));
    this.scrollDown(true);
    this.dom.prompt.value = "";
    this.remember(roomId, text, model);

    const controller = new AbortController();
    this.controller = controller;
    this.setStreaming(true);
    const body = { model, messages, stream: true };
    if (this.thinks(model)) body.think = true;
    try {
      await this.stream(body, roomId, answer, controller.signal);
      answer.state = "done";
    } catch (error) {
      if (controller.signal.aborted) {
        answer.state = "stopped";
      } else {
        answer.state = "error";
        answer.error = error instanceof ApiError || error instanceof Error ? error.message : String(error);
      }
    } finally {
      answer.retryIn = null;
      if (this.controller === controller) this.controller = null;
      this.setStreaming(false);
      this.paint(answer);
      this.focusPrompt();
      // The proxy records the turn just after the stream ends; look a moment later.
      setTimeout(() => this.loadRooms(), 500);
    }
  }

  async stream(body, roomId, answer, signal) {
    for (;;) {
      const response = await this.api.fetch("POST", "api/chat", {
        body,
        headers: { "X-Room-Id": roomId },
        signal,
      });
      const wait = retryAfterOf(response);
      if (response.status === 503 && wait !== null) {
        // The model's group is full: wait as asked, counting down, then try again.
        await response.body?.cancel();
        for (let left = Math.max(1, Math.ceil(wait)); left > 0; left--) {
          answer.retryIn = left;
          this.paint(answer);
          await sleep(1, signal);
        }
        answer.retryIn = null;
        this.paint(answer);
        continue;
      }
      if (!response.ok) throw await errorOf(response);
      let finished = false;
      for await (const chunk of ndjson(response)) {
        if (chunk.error) throw new Error(typeof chunk.error === "string" ? chunk.error : chunk.error.message);
        const message = chunk.message || {};
        if (message.thinking) answer.thinking += message.thinking;
        if (message.content) answer.content += message.content;
        if (answer.state === "waiting" && (answer.thinking || answer.content)) answer.state = "streaming";
        this.schedulePaint(answer);
        if (chunk.done) finished = true;
      }
      if (!finished) throw new Error(t("cutOff"));
      return;
    }
  }

  // The room enters the list at once; the proxy's record replaces it when written.
  remember(roomId, text, model) {
    let room = this.rooms.find((r) => r.id === roomId);
    if (!room) {
      room = {
        id: roomId,
        title: text.replace(/\s+/g, " ").trim().slice(0, TITLE_MAX),
        model,
        pending: true,
      };
      this.roomTitle = room.title;
      this.renderTitle();
    } else {
      this.rooms = this.rooms.filter((r) => r !== room);
    }
    room.updated_at = new Date().toISOString();
    this.rooms.unshift(room);
    this.renderRooms();
  }
}
