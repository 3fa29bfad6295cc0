// Building the page: elements from plain values, text only ever as text nodes.
//
// h(tag, props, ...children): props set attributes, properties (booleans, value) and
// listeners (onclick: fn); `t: key` or `t: [key, params]` sets the text from the current
// language and marks the element so that switching language re-translates it in place
// (translateAll). Children that are not nodes become text nodes: nothing here parses
// HTML. The only HTML the page ever inserts is model output, sanitised (markdown.js).

import { t } from "./i18n.js";

const TRANSLATED = {
  t: "i18n",
  tPlaceholder: "i18nPlaceholder",
  tAria: "i18nAria",
  tTitle: "i18nTitle",
};

export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key in TRANSLATED) {
      el.dataset[TRANSLATED[key]] = JSON.stringify(Array.isArray(value) ? value : [value]);
    } else if (key === "class") {
      el.className = value;
    } else if (key === "text") {
      el.textContent = value;
    } else if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (typeof value === "boolean" || key === "value") {
      el[key] = value;
    } else {
      el.setAttribute(key, String(value));
    }
  }
  translate(el);
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

// Sets an element's translated text (and its translated attributes) again.
export function translate(el) {
  const read = (name) => {
    const raw = el.dataset[name];
    if (raw === undefined) return null;
    const [key, params] = JSON.parse(raw);
    return t(key, params);
  };
  const text = read("i18n");
  if (text !== null) el.textContent = text;
  const placeholder = read("i18nPlaceholder");
  if (placeholder !== null) el.setAttribute("placeholder", placeholder);
  const aria = read("i18nAria");
  if (aria !== null) el.setAttribute("aria-label", aria);
  const title = read("i18nTitle");
  if (title !== null) el.setAttribute("title", title);
}

// Re-translates every marked element under root (the language was switched).
export function translateAll(root) {
  const marked = root.querySelectorAll(
    "[data-i18n], [data-i18n-placeholder], [data-i18n-aria], [data-i18n-title]",
  );
  for (const el of marked) translate(el);
}

// Changes what a translated element says (e.g. a countdown), keeping it translatable.
export function retext(el, key, params) {
  el.dataset.i18n = JSON.stringify([key, params]);
  translate(el);
}

export function formatTime(iso, withDate = true) {
  if (!iso) return "";
  const options = withDate
    ? { dateStyle: "medium", timeStyle: "short" }
    : { timeStyle: "medium" };
  return new Intl.DateTimeFormat(document.documentElement.lang || undefined, options).format(
    new Date(iso),
  );
}
