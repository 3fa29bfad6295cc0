// The login token, kept where the user chose.
//
// sessionStorage by default: the token survives a reload and is gone when the tab
// closes. "Remember me" puts it in localStorage, which survives a browser restart. Both
// are readable by any script running on this origin, which is why the page runs no
// script but its own (Content-Security-Policy: script-src 'self') and never inserts
// model output unsanitised. No cookie is used: the proxy accepts one kind of credential.

const KEY = "olbproxy.session";

function stores() {
  return [window.sessionStorage, window.localStorage];
}

export function loadSession() {
  for (const store of stores()) {
    const raw = store.getItem(KEY);
    if (!raw) continue;
    try {
      const session = JSON.parse(raw);
      const expires = Date.parse(session.expires_at);
      if (typeof session.token === "string" && !(expires <= Date.now())) {
        session.remember = store === window.localStorage;
        return session;
      }
    } catch {
      // Unreadable: forget it.
    }
    store.removeItem(KEY);
  }
  return null;
}

export function saveSession(session) {
  clearSession();
  const store = session.remember ? window.localStorage : window.sessionStorage;
  const { token, expires_at, username, role } = session;
  store.setItem(KEY, JSON.stringify({ token, expires_at, username, role }));
}

export function clearSession() {
  for (const store of stores()) store.removeItem(KEY);
}
