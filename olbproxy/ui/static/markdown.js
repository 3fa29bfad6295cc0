// Model answers are Markdown: rendered by marked, then sanitised by DOMPurify.
//
// marked passes raw HTML through on purpose, so its output is never trusted: DOMPurify
// parses it in an inert document, drops scripts, event handlers, javascript: URLs,
// forms and style attributes (the Content-Security-Policy would refuse inline styles
// anyway), and hands back a DocumentFragment that is inserted as nodes. No HTML string
// from a model is ever assigned to innerHTML.

import { Marked } from "./vendor/marked/marked.esm.js";
import DOMPurify from "./vendor/dompurify/purify.es.mjs";

const markdown = new Marked({ gfm: true, breaks: false, async: false });

const POLICY = {
  USE_PROFILES: { html: true },
  FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select", "option", "dialog"],
  FORBID_ATTR: ["style"],
  RETURN_DOM_FRAGMENT: true,
};

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  // Links open elsewhere and tell the other site nothing about this page.
  if (node.tagName === "A" && node.hasAttribute("href")) {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
});

// Replaces el's children with the rendered, sanitised Markdown.
export function renderMarkdown(el, text) {
  const html = markdown.parse(text || "");
  el.replaceChildren(DOMPurify.sanitize(html, POLICY));
  for (const table of el.querySelectorAll("table")) {
    // Wide tables scroll on their own instead of widening the page (phones).
    if (!table.parentElement.classList.contains("table-scroll")) {
      const wrapper = document.createElement("div");
      wrapper.className = "table-scroll";
      table.replaceWith(wrapper);
      wrapper.append(table);
    }
  }
}
