// The page: a header, and one view at a time chosen by the address's #fragment.
//
//   #/login  #/signup          logged out
//   #/chat  #/chat/<room id>   the rooms and the chat (the default)
//   #/account                  API keys and password
//   #/admin                    live load and users (admins)
//
// The fragment never reaches the server, so reloading keeps the view (and the open room)
// without any server-side routing.

import { Api } from "./api.js";
import { AccountView } from "./account.js";
import { AdminView } from "./admin.js";
import { ChatView } from "./chat.js";
import { h, translateAll } from "./dom.js";
import { LANGUAGES, detectLanguage, setLanguage, language } from "./i18n.js";
import { LoginView } from "./login.js";
import { clearSession, loadSession, saveSession } from "./session.js";

class App {
  constructor(root) {
    this.root = root;
    this.config = { auth: true, registration: "open", min_password_length: 8 };
    this.session = loadSession();
    this.me = null;
    this.notice = null; // a message for the login page (e.g. the session ended)
    this.api = new Api({
      token: () => (this.session ? this.session.token : null),
      onUnauthorized: () => this.sessionEnded(),
    });
    this.view = null;
    this.chat = new ChatView(this);
  }

  async start() {
    setLanguage(detectLanguage());
    try {
      this.config = await this.api.get("ui/config.json");
    } catch {
      // Keep the defaults: the login page still works, and says so on error.
    }
    this.shell();
    window.addEventListener("hashchange", () => this.route());
    if (this.session || !this.config.auth) await this.loadMe();
    await this.route();
  }

  shell() {
    this.nav = h("nav", { class: "nav", tAria: "navigation" });
    this.who = h("span", { class: "who" });
    const languages = h(
      "select",
      { class: "language", tAria: "language", onchange: (e) => this.switchLanguage(e.target.value) },
      LANGUAGES.map(([code, name]) => h("option", { value: code, text: name })),
    );
    languages.value = language();
    this.languages = languages;
    this.main = h("main", { class: "main", id: "main" });
    this.root.replaceChildren(
      h(
        "header",
        { class: "top" },
        h("a", { class: "brand", href: "#/chat", text: "olbproxy" }),
        this.nav,
        h("div", { class: "top-right" }, this.who, languages),
      ),
      this.main,
    );
  }

  switchLanguage(code) {
    setLanguage(code, { remember: true });
    this.languages.value = code;
    translateAll(document.body);
    if (this.view && this.view.languageChanged) this.view.languageChanged();
  }

  async loadMe() {
    try {
      this.me = this.config.auth
        ? await this.api.get("api/auth/me")
        : { username: "", role: "admin", groups: [], every_group: true };
    } catch (error) {
      this.me = null;
      if (error.status !== 401) this.notice = ["errorGeneric", { message: error.message }];
      this.dropSession();
    }
  }

  loggedIn() {
    return Boolean(this.me);
  }

  async route() {
    const [, name = "", ...rest] = (location.hash || "#/").split("/");
    let wanted = name;
    if (!this.loggedIn()) {
      wanted = name === "signup" ? "signup" : "login";
    } else if (name === "login" || name === "signup" || name === "") {
      wanted = "chat";
    } else if (name === "admin" && this.me.role !== "admin") {
      wanted = "chat";
    } else if (name === "account" && !this.config.auth) {
      wanted = "chat";
    }
    if (wanted !== name) {
      history.replaceState(null, "", `#/${wanted}`);
    }
    this.renderNav(wanted);
    const next = this.viewFor(wanted);
    if (this.view !== next) {
      if (this.view) this.view.unmount();
      this.view = next;
      this.main.replaceChildren();
      this.view.mount(this.main, rest.join("/"));
    } else if (this.view.show) {
      this.view.show(rest.join("/"));
    }
  }

  viewFor(name) {
    if (name === "login" || name === "signup") {
      if (!(this.login instanceof LoginView)) this.login = new LoginView(this);
      this.login.mode = name;
      return this.login;
    }
    if (name === "account") return (this.account ||= new AccountView(this));
    if (name === "admin") return (this.admin ||= new AdminView(this));
    return this.chat;
  }

  renderNav(current) {
    const link = (name, key) =>
      h("a", {
        href: `#/${name}`,
        t: key,
        class: current === name ? "current" : null,
        "aria-current": current === name ? "page" : null,
      });
    const links = [];
    if (this.loggedIn()) {
      links.push(link("chat", "navChat"));
      if (this.config.auth) links.push(link("account", "navAccount"));
      if (this.me.role === "admin") links.push(link("admin", "navAdmin"));
    }
    this.nav.replaceChildren(...links);
    const who = [];
    if (this.loggedIn() && this.config.auth) {
      who.push(h("span", { class: "username", text: this.me.username }));
      who.push(h("button", { type: "button", class: "link", t: "logout", onclick: () => this.logout() }));
    }
    this.who.replaceChildren(...who);
  }

  // After a successful login or sign-up.
  async signedIn(answer, remember) {
    this.session = { ...answer, remember };
    saveSession(this.session);
    this.notice = null;
    await this.loadMe();
    if (this.loggedIn()) location.hash = "#/chat";
    else await this.route();
  }

  // A new token for the same user (after a password change).
  replaceToken(token, expiresAt) {
    if (!this.session) return;
    this.session = { ...this.session, token, expires_at: expiresAt };
    saveSession(this.session);
  }

  dropSession() {
    clearSession();
    this.session = null;
    this.me = null;
    this.chat.reset();
    this.account = null;
    this.admin = null;
  }

  logout() {
    this.dropSession();
    location.hash = "#/login";
    this.route();
  }

  sessionEnded() {
    if (!this.session) return;
    this.dropSession();
    this.notice = ["sessionEnded"];
    location.hash = "#/login";
    this.route();
  }
}

const app = new App(document.getElementById("app"));
app.start();
