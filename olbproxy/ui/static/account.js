// The user's own account: API keys (create, copy once, revoke) and the password.
//
// A new key is shown once, in this page's memory only (never stored in the browser),
// with the lines that put it to use in Open WebUI, the ollama libraries, the OpenAI SDK
// and curl.

import { BASE } from "./api.js";
import { formatTime, h, retext } from "./dom.js";

const PLACEHOLDER = "olb_...";

// Copies text; outside a secure context (plain http to a LAN name) the Clipboard API is
// missing, so the text is selected and copied the old way.
async function copyText(text, field) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    if (!field) return false;
    field.focus();
    field.select();
    return document.execCommand && document.execCommand("copy");
  }
}

export function snippets(key, model) {
  const host = BASE.toString().replace(/\/$/, "");
  return [
    ["snippetOpenWebui", `URL: ${host}\nKey: ${key}\n(Admin Settings > Connections > Ollama API)`],
    [
      "snippetPython",
      `import ollama\n\nclient = ollama.Client(host="${host}", headers={"Authorization": "Bearer ${key}"})\n` +
        `reply = client.chat(model="${model}", messages=[{"role": "user", "content": "hello"}])\n` +
        "print(reply.message.content)",
    ],
    ["snippetEnv", `export OLLAMA_HOST=${host}\nexport OLLAMA_API_KEY=${key}`],
    [
      "snippetJs",
      `import { Ollama } from "ollama";\n\nconst ollama = new Ollama({ host: "${host}", headers: { Authorization: "Bearer ${key}" } });\n` +
        `const reply = await ollama.chat({ model: "${model}", messages: [{ role: "user", content: "hello" }] });\n` +
        "console.log(reply.message.content);",
    ],
    [
      "snippetOpenai",
      `from openai import OpenAI\n\nclient = OpenAI(base_url="${host}/v1", api_key="${key}")\n` +
        `reply = client.chat.completions.create(model="${model}", messages=[{"role": "user", "content": "hello"}])\n` +
        "print(reply.choices[0].message.content)",
    ],
    [
      "snippetCurl",
      `curl ${host}/api/chat -H "Authorization: Bearer ${key}" \\\n  -d '{"model": "${model}", "messages": [{"role": "user", "content": "hello"}]}'`,
    ],
  ];
}

export class AccountView {
  constructor(app) {
    this.app = app;
    this.keys = [];
    this.fresh = null; // the key just created: {id, key}; shown once
  }

  mount(el) {
    this.el = el;
    this.render();
    this.loadKeys();
  }

  unmount() {
    this.el = null;
    this.fresh = null; // leaving the page is the end of "shown once"
  }

  languageChanged() {
    this.renderKeys();
  }

  render() {
    const me = this.app.me;
    this.keyMessage = h("p", { class: "form-message", role: "status" });
    this.keyTable = h("div", { class: "keys" });
    this.freshBox = h("div", { class: "fresh-key", hidden: true });
    this.snippetBox = h("div", { class: "snippets" });
    const groupBoxes =
      me.groups.length > 1
        ? h(
            "fieldset",
            { class: "groups" },
            h("legend", { t: "keyGroups" }),
            me.groups.map((g) =>
              h("label", { class: "check" }, h("input", { type: "checkbox", name: "group", value: g }), h("span", { text: g })),
            ),
            h("p", { class: "hint", t: "keyGroupsHint" }),
          )
        : null;
    const create = h(
      "form",
      { class: "form inline-form", onsubmit: (e) => this.create(e) },
      h(
        "div",
        { class: "field" },
        h("label", { for: "key-label", t: "keyLabel" }),
        h("input", { id: "key-label", name: "label", maxlength: "64", tPlaceholder: "keyLabelPlaceholder" }),
      ),
      groupBoxes,
      h("button", { type: "submit", class: "primary", t: "createKey" }),
    );
    this.passwordMessage = h("p", { class: "form-message", role: "status" });
    const password = h(
      "form",
      { class: "form", onsubmit: (e) => this.changePassword(e) },
      // For password managers: whose password this is.
      h("input", { type: "text", name: "username", autocomplete: "username", value: me.username, readonly: true, hidden: true }),
      this.field("current", "currentPassword", "current-password"),
      this.field("new", "newPassword", "new-password"),
      this.field("again", "passwordAgain", "new-password"),
      h("button", { type: "submit", class: "primary", t: "changePassword" }),
      this.passwordMessage,
    );
    this.el.replaceChildren(
      h(
        "div",
        { class: "page" },
        h(
          "section",
          { class: "card" },
          h("h1", { t: "apiKeys" }),
          h("p", { class: "hint", t: "apiKeysIntro" }),
          create,
          this.keyMessage,
          this.freshBox,
          this.keyTable,
        ),
        h("section", { class: "card" }, h("h2", { t: "useKey" }), h("p", { class: "hint", t: "useKeyIntro" }), this.snippetBox),
        h("section", { class: "card" }, h("h2", { t: "changePassword" }), password),
      ),
    );
    this.renderSnippets();
  }

  field(name, key, autocomplete) {
    const id = `password-${name}`;
    return h(
      "div",
      { class: "field" },
      h("label", { for: id, t: key }),
      h("input", { id, name, type: "password", required: true, autocomplete }),
    );
  }

  async loadKeys() {
    try {
      this.keys = (await this.app.api.get("api/auth/keys")).keys;
    } catch (error) {
      if (error.status !== 401) retext(this.keyMessage, "errorGeneric", { message: error.message });
      return;
    }
    this.renderKeys();
  }

  renderKeys() {
    if (!this.el) return;
    if (this.keys.length === 0) {
      this.keyTable.replaceChildren(h("p", { class: "empty", t: "noKeys" }));
      return;
    }
    const head = h(
      "tr",
      null,
      ["keyLabel", "keyId", "keyGroups", "created", "state", ""].map((k) => h("th", k ? { scope: "col", t: k } : { scope: "col" })),
    );
    const rows = this.keys.map((key) => this.keyRow(key));
    this.keyTable.replaceChildren(
      h("div", { class: "table-scroll" }, h("table", { class: "table" }, h("thead", null, head), h("tbody", null, rows))),
    );
  }

  keyRow(key, confirming = false) {
    const revoked = Boolean(key.revoked_at);
    let action;
    if (revoked) {
      action = null;
    } else if (confirming) {
      action = h(
        "span",
        { class: "confirm" },
        h("button", { type: "button", class: "small danger", t: "revokeConfirm", onclick: () => this.revoke(key) }),
        h("button", { type: "button", class: "small", t: "cancel", onclick: () => this.renderKeys() }),
      );
    } else {
      action = h("button", {
        type: "button",
        class: "small",
        t: "revoke",
        onclick: (e) => e.target.closest("tr").replaceWith(this.keyRow(key, true)),
      });
    }
    return h(
      "tr",
      { class: revoked ? "revoked" : null, "data-key": key.id },
      h("td", { text: key.label || "—" }),
      h("td", null, h("code", { text: key.id })),
      h("td", key.groups ? { text: key.groups.join(", ") } : { t: "ownerGroups" }),
      h("td", { text: formatTime(key.created_at) }),
      h("td", revoked ? { t: ["revokedAt", { when: formatTime(key.revoked_at) }] } : { t: "active" }),
      h("td", null, action),
    );
  }

  renderSnippets() {
    const key = this.fresh ? this.fresh.key : PLACEHOLDER;
    const model = this.app.chat.model || "gpt-oss:20b";
    this.snippetBox.replaceChildren(
      ...snippets(key, model).map(([title, text]) => {
        const code = h("code", { text });
        const copied = h("span", { class: "copied", role: "status" });
        return h(
          "div",
          { class: "snippet" },
          h(
            "div",
            { class: "snippet-head" },
            h("h3", { t: title }),
            h("button", {
              type: "button",
              class: "small",
              t: "copy",
              onclick: async () => {
                if (await copyText(text)) retext(copied, "copied");
              },
            }),
            copied,
          ),
          h("pre", null, code),
        );
      }),
    );
  }

  async create(event) {
    event.preventDefault();
    const form = event.target;
    const label = form.elements.label.value.trim();
    const body = { label };
    const chosen = [...form.querySelectorAll("input[name=group]:checked")].map((i) => i.value);
    if (chosen.length) body.groups = chosen;
    try {
      const made = await this.app.api.post("api/auth/keys", body);
      this.fresh = { id: made.id, key: made.key };
      this.keys.unshift(made);
      form.reset();
      retext(this.keyMessage, "keyCreated");
    } catch (error) {
      if (error.status !== 401) retext(this.keyMessage, "errorGeneric", { message: error.message });
      return;
    }
    this.showFresh();
    this.renderKeys();
    this.renderSnippets();
  }

  showFresh() {
    const field = h("input", { class: "key-value", readonly: true, value: this.fresh.key, tAria: "newKey" });
    const copied = h("span", { class: "copied", role: "status" });
    this.freshBox.replaceChildren(
      h("p", { class: "warning", t: "keyOnce" }),
      h(
        "div",
        { class: "key-line" },
        field,
        h("button", {
          type: "button",
          class: "primary",
          t: "copy",
          onclick: async () => {
            if (await copyText(this.fresh ? this.fresh.key : "", field)) retext(copied, "copied");
          },
        }),
        copied,
      ),
      h("button", {
        type: "button",
        class: "small",
        t: "keyStored",
        onclick: () => {
          this.fresh = null;
          this.freshBox.hidden = true;
          this.freshBox.replaceChildren();
          this.renderSnippets();
        },
      }),
    );
    this.freshBox.hidden = false;
    field.focus();
    field.select();
  }

  async revoke(key) {
    try {
      await this.app.api.call("DELETE", `api/auth/keys/${encodeURIComponent(key.id)}`);
      key.revoked_at = new Date().toISOString();
      retext(this.keyMessage, "keyRevoked");
      if (this.fresh && this.fresh.id === key.id) {
        this.fresh = null;
        this.freshBox.hidden = true;
        this.renderSnippets();
      }
    } catch (error) {
      if (error.status !== 401) retext(this.keyMessage, "errorGeneric", { message: error.message });
    }
    this.loadKeys();
  }

  async changePassword(event) {
    event.preventDefault();
    const form = event.target;
    const say = (key, params, kind = "error") => {
      retext(this.passwordMessage, key, params);
      this.passwordMessage.className = `form-message ${kind}`;
    };
    const current = form.elements.current.value;
    const next = form.elements.new.value;
    const minimum = this.app.config.min_password_length;
    if (next.length < minimum) return say("passwordTooShort", { n: minimum });
    if (next !== form.elements.again.value) return say("passwordsDiffer");
    try {
      const answer = await this.app.api.post("api/auth/password", {
        current_password: current,
        new_password: next,
      });
      this.app.replaceToken(answer.token, answer.expires_at);
      form.reset();
      say("passwordChanged", null, "ok");
    } catch (error) {
      if (error.status === 403 && error.message.includes("current password")) {
        say("currentPasswordWrong");
      }
      else if (error.status === 429) say("tooManyAttempts", { s: Math.ceil(error.retryAfter ?? 60) });
      else if (error.status !== 401) say("errorGeneric", { message: error.message });
    }
  }
}
