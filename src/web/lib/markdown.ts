// Model output as Markdown: marked renders it with any raw HTML escaped (so `<script>` shows as
// text), then DOMPurify removes whatever could still run (javascript: links and the like).
import DOMPurify from "dompurify";
import { Marked, type Tokens } from "marked";

const escapeHtml = (s: string) => s.replace(/[&<>"']/g, (ch) => `&#${ch.charCodeAt(0)};`);

/**
 * An image in an answer is drawn only from a data: URL (marked's own rendering); any other becomes
 * a link to it, so that the page fetches nothing a model names (a tracking pixel, a GET on this
 * server's API), let alone once per redraw while the answer streams.
 */
function image({ href, text }: Tokens.Image): string | false {
  if (href.startsWith("data:image/")) return false;
  return `<a href="${escapeHtml(href)}">${escapeHtml(text || href)}</a>`;
}

const marked = new Marked({ gfm: true, renderer: { html: ({ text }) => escapeHtml(text), image } });

// A link in an answer opens in a new tab: following it does not leave (and so stop) the chat.
DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A" && node.hasAttribute("href")) {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
});

export function renderMarkdown(element: HTMLElement, text: string): void {
  element.innerHTML = DOMPurify.sanitize(marked.parse(text, { async: false }));
}

/** An answer split into its reasoning (`<think>…</think>`, possibly still open) and the rest. */
export function splitReasoning(text: string): { reasoning: string | null; content: string } {
  const open = text.indexOf("<think>");
  const close = text.indexOf("</think>");
  // Some templates open the block in the prompt: the answer then only closes it.
  if (open === -1 && close !== -1) return { reasoning: text.slice(0, close).trim(), content: text.slice(close + 8) };
  if (open === -1 || text.slice(0, open).trim()) return { reasoning: null, content: text };
  if (close === -1) return { reasoning: text.slice(open + 7).trim(), content: "" };
  return { reasoning: text.slice(open + 7, close).trim(), content: text.slice(close + 8) };
}
