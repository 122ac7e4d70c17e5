// Model output as Markdown: marked renders it with any raw HTML escaped (so `<script>` shows as
// text), then DOMPurify removes whatever could still run (javascript: links and the like).
import DOMPurify from "dompurify";
import { Marked } from "marked";

const escapeHtml = (s: string) => s.replace(/[&<>"']/g, (ch) => `&#${ch.charCodeAt(0)};`);
const marked = new Marked({ gfm: true, renderer: { html: ({ text }) => escapeHtml(text) } });

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
