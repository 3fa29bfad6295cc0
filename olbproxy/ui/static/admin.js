// For admins: the live load of every group and instance, and the users.
//
// The load comes from GET /api/olbproxy/status, read again every few seconds while the
// page is shown; users from /api/olbproxy/users, changed with PATCH (disable, groups).

import { formatTime, h, retext } from "./dom.js";

const REFRESH_SECONDS = 3;

export class AdminView {
  constructor(app) {
    this.app = app;
    this.status = null;
    this.users = [];
    this.timer = null;
  }

  mount(el) {
    this.el = el;
    this.updated = h("p", { class: "hint updated", role: "status" });
    this.load = h("div", { class: "load" });
    this.userMessage = h("p", { class: "form-message user-message", role: "status" });
    this.userTable = h("div", { class: "users" });
    const sections = [
      h("section", { class: "card" }, h("h1", { t: "liveLoad" }), this.updated, this.load),
    ];
    if (this.app.config.auth) {
      sections.push(h("section", { class: "card" }, h("h2", { t: "users" }), this.userMessage, this.userTable));
    }
    el.replaceChildren(h("div", { class: "page wide" }, sections));
    this.refresh();
    this.timer = setInterval(() => this.refresh(), REFRESH_SECONDS * 1000);
    if (this.app.config.auth) this.loadUsers();
  }

  unmount() {
    clearInterval(this.timer);
    this.timer = null;
    this.el = null;
  }

  languageChanged() {
    this.renderLoad();
    this.renderUsers();
  }

  groupNames() {
    return this.status ? this.status.groups.map((g) => g.name) : [];
  }

  async refresh() {
    try {
      this.status = await this.app.api.get("api/olbproxy/status");
      this.fetchedAt = new Date().toISOString();
      this.failed = null;
    } catch (error) {
      this.failed = error.message;
    }
    if (!this.el) return;
    this.renderLoad();
    if (this.users.length && !this.usersRendered) this.renderUsers();
  }

  renderLoad() {
    if (!this.el) return;
    if (this.failed) retext(this.updated, "loadFailed", { message: this.failed });
    else if (this.fetchedAt) retext(this.updated, "updatedAt", { when: formatTime(this.fetchedAt, false), s: REFRESH_SECONDS });
    if (!this.status) return;
    const cards = this.status.groups.map((g) => {
      const head = h(
        "tr",
        null,
        ["instance", "state", "inFlight", "loadedModels", "lastError"].map((k) => h("th", { scope: "col", t: k })),
      );
      const rows = g.backends.map((b) =>
        h(
          "tr",
          { class: b.healthy ? "up" : "down" },
          h("td", null, h("code", { text: b.label })),
          h("td", null, h("span", { class: b.healthy ? "badge up" : "badge down", t: b.healthy ? "up" : "down" })),
          h("td", { text: `${b.in_flight} / ${b.slots}` }),
          h("td", { text: b.loaded.join(", ") || "—" }),
          h("td", { class: "last-error", text: b.last_error || "" }),
        ),
      );
      return h(
        "article",
        { class: "group", "data-group": g.name },
        h(
          "div",
          { class: "group-head" },
          h("h3", { text: g.name }),
          h("span", { class: "models", text: g.models.join(", ") }),
        ),
        h(
          "dl",
          { class: "figures" },
          h("div", null, h("dt", { t: "inFlight" }), h("dd", { class: "in-flight", text: `${g.in_flight} / ${g.slots}` })),
          h("div", null, h("dt", { t: "queued" }), h("dd", { class: "waiting", text: `${g.waiting} / ${g.queue_size}` })),
          h("div", null, h("dt", { t: "healthy" }), h("dd", { class: "healthy", text: `${g.healthy} / ${g.backends.length}` })),
        ),
        h("div", { class: "table-scroll" }, h("table", { class: "table" }, h("thead", null, head), h("tbody", null, rows))),
      );
    });
    const backlog = this.status.persistence;
    if (backlog) {
      cards.push(
        h(
          "p",
          { class: "hint backlog" },
          h("span", { t: ["backlog", { queue: backlog.queue ?? 0, spool: backlog.spool ?? 0 }] }),
        ),
      );
    }
    this.load.replaceChildren(...cards);
  }

  async loadUsers() {
    try {
      this.users = (await this.app.api.get("api/olbproxy/users")).users;
    } catch (error) {
      if (error.status !== 401) retext(this.userMessage, "errorGeneric", { message: error.message });
      return;
    }
    this.renderUsers();
  }

  renderUsers() {
    if (!this.el || !this.app.config.auth) return;
    // The group checkboxes need the configured groups, which come with the status.
    this.usersRendered = Boolean(this.status);
    const head = h(
      "tr",
      null,
      ["username", "role", "groups", "state", "lastLogin", ""].map((k) => h("th", k ? { scope: "col", t: k } : { scope: "col" })),
    );
    const rows = this.users.map((u) => this.userRow(u));
    this.userTable.replaceChildren(
      h("div", { class: "table-scroll" }, h("table", { class: "table" }, h("thead", null, head), h("tbody", null, rows))),
    );
  }

  userRow(user) {
    const names = this.groupNames();
    const every = h("input", { type: "checkbox", checked: user.groups === null, "data-every": "1" });
    const boxes = names.map((name) =>
      h(
        "label",
        { class: "check" },
        h("input", {
          type: "checkbox",
          value: name,
          checked: user.groups === null || user.groups.includes(name),
          disabled: user.groups === null,
        }),
        h("span", { text: name }),
      ),
    );
    every.addEventListener("change", () => {
      for (const box of groupCell.querySelectorAll("input[value]")) {
        box.disabled = every.checked;
        if (every.checked) box.checked = true;
      }
    });
    const save = h("button", { type: "button", class: "small", t: "saveGroups", onclick: () => this.saveGroups(user, groupCell) });
    const groupCell = h(
      "td",
      { class: "group-boxes" },
      h("label", { class: "check" }, every, h("span", { t: "everyGroup" })),
      boxes,
      save,
    );
    const self = user.username === this.app.me.username;
    return h(
      "tr",
      { class: user.disabled ? "disabled" : null, "data-user": user.username },
      h("td", { text: user.username }),
      h("td", { t: user.role === "admin" ? "roleAdmin" : "roleUser" }),
      groupCell,
      h("td", null, h("span", { class: user.disabled ? "badge down" : "badge up", t: user.disabled ? "disabled" : "active" })),
      h("td", { text: user.last_login_at ? formatTime(user.last_login_at) : "—" }),
      h(
        "td",
        null,
        self
          ? null
          : h("button", {
              type: "button",
              class: user.disabled ? "small" : "small danger",
              t: user.disabled ? "enable" : "disable",
              onclick: () => this.change(user, { disabled: !user.disabled }),
            }),
      ),
    );
  }

  async saveGroups(user, cell) {
    const every = cell.querySelector("input[data-every]").checked;
    const chosen = [...cell.querySelectorAll("input[value]:checked")].map((i) => i.value);
    if (!every && chosen.length === 0) return retext(this.userMessage, "chooseGroup");
    await this.change(user, { groups: every ? null : chosen });
  }

  async change(user, changes) {
    try {
      const changed = await this.app.api.call(
        "PATCH",
        `api/olbproxy/users/${encodeURIComponent(user.username)}`,
        changes,
      );
      Object.assign(user, changed);
      retext(this.userMessage, "userSaved", { name: user.username });
    } catch (error) {
      if (error.status !== 401) retext(this.userMessage, "errorGeneric", { message: error.message });
    }
    this.renderUsers();
  }
}
