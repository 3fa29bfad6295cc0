// Login and sign-up, as the seed app had them, against /api/auth/login and /register.
//
// Every refusal the proxy can give is said plainly: a wrong password (401), too many
// attempts (429, with the wait from Retry-After), registration closed or an invite code
// missing (403), a taken username (409), a password too short (checked here first).

import { h, retext } from "./dom.js";

export class LoginView {
  constructor(app) {
    this.app = app;
    this.mode = "login";
  }

  mount(el) {
    this.el = el;
    this.render();
  }

  show() {
    // Only a switch between login and sign-up redraws: a message on screen stays.
    if (this.rendered !== this.mode) this.render();
  }

  unmount() {
    this.el = null;
    this.rendered = null;
  }

  render() {
    if (!this.el) return;
    this.rendered = this.mode;
    const signup = this.mode === "signup";
    const registration = this.app.config.registration;
    this.message = h("p", { class: "form-message", role: "alert", "aria-live": "assertive" });
    const tabs = h(
      "div",
      { class: "tabs", role: "tablist" },
      h("a", { href: "#/login", role: "tab", "aria-selected": String(!signup), class: signup ? null : "current", t: "login" }),
      h("a", { href: "#/signup", role: "tab", "aria-selected": String(signup), class: signup ? "current" : null, t: "signup" }),
    );
    let body;
    if (signup && registration === "closed") {
      body = h("p", { class: "closed", t: "registrationClosed" });
    } else {
      body = signup ? this.signupForm(registration === "invite") : this.loginForm();
    }
    this.el.replaceChildren(
      h("section", { class: "card auth" }, h("h1", { t: signup ? "signupTitle" : "loginTitle" }), tabs, body, this.message),
    );
    if (this.app.notice) {
      this.say(...this.app.notice);
      this.app.notice = null;
    }
    const first = this.el.querySelector("input");
    if (first) first.focus();
  }

  field(name, key, props = {}) {
    const id = `auth-${name}`;
    return h(
      "div",
      { class: "field" },
      h("label", { for: id, t: key }),
      h("input", { id, name, required: true, ...props }),
    );
  }

  loginForm() {
    return h(
      "form",
      { class: "form", onsubmit: (e) => this.submit(e, "login") },
      this.field("username", "username", { autocomplete: "username", autocapitalize: "none", spellcheck: "false" }),
      this.field("password", "password", { type: "password", autocomplete: "current-password" }),
      h(
        "label",
        { class: "check" },
        h("input", { type: "checkbox", name: "remember" }),
        h("span", { t: "rememberMe" }),
      ),
      h("p", { class: "hint", t: "rememberHint" }),
      h("button", { type: "submit", class: "primary", t: "login" }),
    );
  }

  signupForm(invite) {
    return h(
      "form",
      { class: "form", onsubmit: (e) => this.submit(e, "signup") },
      this.field("username", "username", { autocomplete: "username", autocapitalize: "none", spellcheck: "false" }),
      this.field("password", "password", { type: "password", autocomplete: "new-password" }),
      this.field("password2", "passwordAgain", { type: "password", autocomplete: "new-password" }),
      invite ? this.field("invite", "inviteCode", { autocomplete: "off" }) : null,
      h(
        "label",
        { class: "check" },
        h("input", { type: "checkbox", name: "remember" }),
        h("span", { t: "rememberMe" }),
      ),
      h("button", { type: "submit", class: "primary", t: "signup" }),
    );
  }

  say(key, params, kind = "error") {
    retext(this.message, key, params);
    this.message.className = `form-message ${kind}`;
  }

  async submit(event, mode) {
    event.preventDefault();
    const form = event.target;
    const data = Object.fromEntries(new FormData(form));
    const remember = form.elements.remember.checked;
    const button = form.querySelector("button[type=submit]");
    const credentials = { username: data.username.trim(), password: data.password };
    if (mode === "signup") {
      const minimum = this.app.config.min_password_length;
      if (data.password.length < minimum) return this.say("passwordTooShort", { n: minimum });
      if (data.password !== data.password2) return this.say("passwordsDiffer");
    }
    button.disabled = true;
    this.say("working", null, "info");
    try {
      if (mode === "signup") {
        const body = { ...credentials };
        if (data.invite !== undefined) body.invite = data.invite.trim();
        await this.app.api.post("api/auth/register", body);
      }
      const answer = await this.app.api.post("api/auth/login", credentials);
      await this.app.signedIn(answer, remember);
    } catch (error) {
      this.refused(error, mode);
    } finally {
      button.disabled = false;
    }
  }

  refused(error, mode) {
    const message = error.message || "";
    if (error.status === 401 && mode === "login") return this.say("wrongPassword");
    if (error.status === 429) {
      return this.say("tooManyAttempts", { s: Math.ceil(error.retryAfter ?? 60) });
    }
    if (error.status === 403 && message.startsWith("registration is closed")) {
      return this.say("registrationClosed");
    }
    if (error.status === 403 && message.includes("invite")) return this.say("inviteInvalid");
    if (error.status === 403 && message.includes("disabled")) return this.say("accountDisabled");
    if (error.status === 409) return this.say("usernameTaken");
    if (error.status === undefined) return this.say("networkError");
    return this.say("errorGeneric", { message });
  }
}
