// The chat page: conversations in IndexedDB, answers streamed from /v1/chat/completions.
import { api, errorMessage, events, keyControl } from "./lib/api";
import { renderMarkdown, splitReasoning } from "./lib/markdown";
import {
  deleteConversation,
  getConversation,
  listConversations,
  newConversationId,
  onChangeElsewhere,
  parseConversation,
  saveConversation,
  updateConversation,
  type AnswerStats,
  type Conversation,
  type Message,
} from "./lib/store";

const $ = <T extends HTMLElement = HTMLElement>(selector: string) => document.querySelector<T>(selector)!;
const ui = {
  sidebar: $("#sidebar"),
  list: $<HTMLUListElement>("#conversations"),
  model: $<HTMLSelectElement>("#model"),
  settings: $("#settings"),
  toggleSettings: $<HTMLButtonElement>("#toggle-settings"),
  system: $<HTMLTextAreaElement>("#system"),
  temperature: $<HTMLInputElement>("#temperature"),
  topP: $<HTMLInputElement>("#top-p"),
  maxTokens: $<HTMLInputElement>("#max-tokens"),
  structured: $<HTMLInputElement>("#structured"),
  schema: $<HTMLTextAreaElement>("#schema"),
  notice: $("#notice"),
  messages: $("#messages"),
  composer: $<HTMLFormElement>("#composer"),
  input: $<HTMLTextAreaElement>("#input"),
  send: $<HTMLButtonElement>("#send"),
  stop: $<HTMLButtonElement>("#stop"),
  importFile: $<HTMLInputElement>("#import-file"),
};

// Settings live in localStorage, the same for every conversation.
const settingFields = {
  system: ui.system,
  temperature: ui.temperature,
  topP: ui.topP,
  maxTokens: ui.maxTokens,
  schema: ui.schema,
} as const;
for (const [name, field] of Object.entries(settingFields)) {
  field.value = localStorage.getItem(`mlx.${name}`) ?? "";
  field.addEventListener("change", () => localStorage.setItem(`mlx.${name}`, field.value));
}
ui.structured.checked = localStorage.getItem("mlx.structured") === "1";
ui.schema.hidden = !ui.structured.checked;
ui.structured.addEventListener("change", () => {
  localStorage.setItem("mlx.structured", ui.structured.checked ? "1" : "0");
  ui.schema.hidden = !ui.structured.checked;
});
ui.toggleSettings.addEventListener("click", () => {
  ui.settings.hidden = !ui.settings.hidden;
  ui.toggleSettings.setAttribute("aria-expanded", String(!ui.settings.hidden));
});
$("#toggle-sidebar").addEventListener("click", () => document.body.classList.toggle("sidebar-open"));

let current: Conversation = blankConversation();
/** The answer being generated, if any. */
let running: AbortController | undefined;

function blankConversation(): Conversation {
  return { id: newConversationId(), title: "New chat", model: ui.model.value, messages: [], updatedAt: Date.now() };
}

// ---- models ----

/** The context of each loaded model, as the server lists it (max_model_len). */
const modelContexts = new Map<string, number>();
/** The models as the server last listed them (undefined until it has). */
let listed: { id: string; loaded: boolean }[] | undefined;

async function loadModels(): Promise<void> {
  const [models, loaded] = await Promise.all([
    api("v1/models").then((r) => r.json()),
    api("api/ps").then((r) => r.json()),
  ]);
  const loadedNames = new Set<string>((loaded.models ?? []).map((m: { name: string }) => m.name));
  modelContexts.clear();
  for (const m of models.data as { id: string; max_model_len?: number }[])
    if (m.max_model_len) modelContexts.set(m.id, m.max_model_len);
  listed = (models.data as { id: string }[]).map((m) => ({ id: m.id, loaded: loadedNames.has(m.id) }));
  fillPicker();
}

/**
 * The open conversation's model when the server no longer has it (removed, or another server):
 * it stays picked, said so, rather than another model answering the conversation unasked.
 */
function missingModel(): string | undefined {
  const name = current.model;
  if (!listed || !name || current.messages.length === 0) return undefined;
  return listed.some((m) => m.id === name) ? undefined : name;
}

/** The picker: the models listed, the open conversation's picked (or the last one picked). */
function fillPicker(): void {
  const wanted = current.model || localStorage.getItem("mlx.model") || "";
  const options = (listed ?? []).map(
    (m) => new Option(m.loaded ? `${m.id} (loaded)` : m.id, m.id, false, m.id === wanted),
  );
  const missing = missingModel();
  if (missing) options.push(new Option(`${missing} (not on this server)`, missing, false, true));
  ui.model.replaceChildren(...options);
}
const NO_MODELS =
  "This server has no model to chat with: store one (mlx pull smollm2), or start mlx serve with -m MODEL.";

/**
 * Lists the models anew, or says above the conversation why it cannot. Done at start and after
 * each answer: answers load and unload models (one model in, the idle one out, past
 * --max-models), and other clients do too, so "(loaded)" would otherwise go stale.
 */
async function refreshModels(): Promise<void> {
  try {
    await loadModels();
    // Said now, rather than by the server's "'model' must not be empty" at the first question.
    ui.notice.textContent = NO_MODELS;
    ui.notice.hidden = (listed?.length ?? 0) > 0;
  } catch (error) {
    ui.notice.textContent = `Cannot list the models: ${(error as Error).message}`;
    ui.notice.hidden = false;
  }
}
ui.model.addEventListener("change", () => {
  localStorage.setItem("mlx.model", ui.model.value);
  current.model = ui.model.value;
  // Another model picked for a conversation whose own is gone: the line saying so goes with it.
  if (!missingModel()) {
    fillPicker();
    ui.messages.querySelector(".model-missing")?.remove();
  }
});

// ---- the conversation list ----

async function showList(): Promise<void> {
  const conversations = await listConversations();
  ui.list.replaceChildren(
    ...conversations.map((c) => {
      const item = document.createElement("li");
      item.classList.toggle("current", c.id === current.id);
      const open = button(c.title, "open", () => openConversation(c.id));
      if (c.id === current.id) open.setAttribute("aria-current", "true");
      const rename = button("✎", "rename", async () => {
        const title = prompt("Rename the conversation", c.title)?.trim();
        if (title)
          await saveConversation({ ...c, title }).then(() =>
            c.id === current.id ? (current.title = title) : undefined,
          );
        await showList();
      });
      const download = button("⤓", "export", () => exportConversation(c));
      const remove = button("✕", "delete", async () => {
        if (!confirm(`Delete "${c.title}"?`)) return;
        await deleteConversation(c.id);
        if (c.id === current.id) newConversation();
        await showList();
      });
      item.append(open, rename, download, remove);
      return item;
    }),
  );
}

function button(text: string, label: string, onClick: () => unknown): HTMLButtonElement {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  b.className = label;
  if (text !== label) b.setAttribute("aria-label", label);
  b.addEventListener("click", onClick);
  return b;
}

function exportConversation(c: Conversation): void {
  const url = URL.createObjectURL(new Blob([JSON.stringify(c, null, 2)], { type: "application/json" }));
  const a = document.createElement("a");
  a.href = url;
  // Letters and digits of any script stay (\w alone made every Cyrillic or CJK title "_.json").
  a.download = `${c.title.replace(/[^\p{L}\p{N}\p{M}_.-]+/gu, "_") || "conversation"}.json`;
  a.click();
  URL.revokeObjectURL(url);
}

$("#import").addEventListener("click", () => ui.importFile.click());
ui.importFile.addEventListener("change", async () => {
  const file = ui.importFile.files?.[0];
  ui.importFile.value = "";
  if (!file) return;
  let imported: Conversation;
  try {
    imported = parseConversation(JSON.parse(await file.text()));
  } catch (error) {
    alert(`Cannot import ${file.name}: ${(error as Error).message}`);
    return;
  }
  // Shown in place of the open conversation: its answer stops, as when another one is opened.
  stop();
  current = imported;
  await saveConversation(current);
  localStorage.setItem("mlx.conversation", current.id);
  fillPicker();
  await showConversation();
});

async function openConversation(id: string): Promise<void> {
  stop();
  const c = await getConversation(id);
  if (!c) return;
  current = c;
  localStorage.setItem("mlx.conversation", id);
  fillPicker();
  document.body.classList.remove("sidebar-open");
  await showConversation();
}

// Another tab changed a conversation: list it anew, and show the open one as it now is (not
// while an answer streams here: that answer saves it when done).
onChangeElsewhere(async (id) => {
  if (id !== current.id || running) return showList();
  const saved = await getConversation(id);
  if (saved) {
    // The reasoning the reader opened here stays open in the answers as saved there.
    for (const [i, m] of current.messages.entries()) {
      const same = saved.messages[i];
      if (same && openReasoning.has(m)) openReasoning.add(same);
    }
    current = saved;
    // Saved once a second while the other tab writes: a reader scrolled up here stays put.
    await showConversation({ keepPlace: true });
  } else await showList();
});

function newConversation(): void {
  stop();
  current = blankConversation();
  // A model the server no longer has, picked for the conversation left, is not the new one's.
  fillPicker();
  current.model = ui.model.value;
  localStorage.removeItem("mlx.conversation");
  document.body.classList.remove("sidebar-open");
  void showConversation();
  ui.input.focus();
}
$("#new-chat").addEventListener("click", newConversation);

// ---- messages ----

/**
 * Draws the open conversation, scrolled to its end; with `keepPlace` (the same conversation drawn
 * anew) a reader scrolled up stays where they were, as while an answer streams here.
 */
async function showConversation(o: { keepPlace?: boolean } = {}): Promise<void> {
  // An answer saved unfinished that another tab is still writing: said so, not that a reload cut it.
  const last = current.messages.at(-1);
  const elsewhere = last?.note === UNFINISHED && (await writtenElsewhere(current.id));
  const place = o.keepPlace && !isScrolledToEnd() ? ui.messages.scrollTop : undefined;
  ui.messages.replaceChildren(
    ...current.messages.map((m, i) => messageView(m === last && elsewhere ? { ...m, note: WRITING_ELSEWHERE } : m, i)),
  );
  const missing = missingModel();
  if (missing)
    ui.messages.append(
      Object.assign(document.createElement("p"), {
        className: "model-missing",
        textContent: `This conversation's model, ${missing}, is not on this server: pick another one to go on.`,
      }),
    );
  ui.messages.scrollTop = place ?? ui.messages.scrollHeight;
  await showList();
}

function messageView(m: Message, index: number): HTMLElement {
  const view = document.createElement("article");
  view.className = `message ${m.role}`;
  const body = document.createElement("div");
  body.className = "body";
  view.append(body);
  fillMessage(view, m);
  const actions = document.createElement("div");
  actions.className = "actions";
  // The answer as its Markdown, without the reasoning.
  if (m.role === "assistant" && m.content)
    actions.append(copyButton("Copy answer", () => splitReasoning(m.content).content.trim()));
  const last = index >= current.messages.length - 2;
  if (last && !running) {
    if (m.role === "assistant" && index === current.messages.length - 1)
      actions.append(button("Regenerate", "regenerate", regenerate));
    if (m.role === "user" && current.messages.slice(index + 1).every((n) => n.role === "assistant"))
      actions.append(button("Edit", "edit", editLast));
  }
  if (actions.childElementCount) view.append(actions);
  return view;
}

/** (Re)draws a message's text, reasoning, figures and note. */
function fillMessage(view: HTMLElement, m: Message): void {
  const body = view.querySelector<HTMLElement>(".body")!;
  if (m.role === "user") {
    body.textContent = m.content;
  } else {
    const { reasoning, content } = splitReasoning(m.content);
    const details = body.querySelector<HTMLDetailsElement>(":scope > details.reasoning");
    if (reasoning === null) details?.remove();
    else {
      const fold = details ?? reasoningView(m);
      if (!details) body.prepend(fold);
      // "…" while it is being written; an answer that ended inside its reasoning has none to wait for.
      const writing = !content && view.classList.contains("streaming");
      fold.querySelector("summary")!.textContent = writing ? "Reasoning…" : "Reasoning";
      fold.querySelector("div")!.textContent = reasoning;
    }
    let markdown = body.querySelector<HTMLElement>(":scope > .markdown");
    if (!markdown) {
      markdown = document.createElement("div");
      markdown.className = "markdown";
      body.append(markdown);
    }
    renderMarkdown(markdown, content);
    addCodeCopyButtons(markdown);
  }
  view.querySelector(".figures")?.remove();
  const figures = [m.stats && statsText(m.stats), m.note].filter(Boolean).join(" · ");
  if (figures) {
    const line = document.createElement("div");
    line.className = "figures";
    line.textContent = figures;
    body.after(line);
  }
}

/** The answers whose reasoning the reader opened: it stays open when the page draws them anew. */
const openReasoning = new WeakSet<Message>();

/**
 * The folded reasoning of an answer. A streaming answer updates it in place rather than draw it
 * anew each frame: a click on it (press and release) lands on the same element, and it stays open.
 */
function reasoningView(m: Message): HTMLDetailsElement {
  const details = document.createElement("details");
  details.className = "reasoning";
  details.open = openReasoning.has(m);
  details.addEventListener("toggle", () => (details.open ? openReasoning.add(m) : openReasoning.delete(m)));
  details.append(document.createElement("summary"), document.createElement("div"));
  return details;
}

/** A Copy button on each code block of an answer. */
function addCodeCopyButtons(markdown: HTMLElement): void {
  for (const pre of markdown.querySelectorAll("pre")) {
    const block = document.createElement("div");
    block.className = "code-block";
    pre.replaceWith(block);
    block.append(
      pre,
      copyButton("Copy code", () => pre.textContent ?? ""),
    );
  }
}

/** A button that copies `text()` and says for a moment whether that worked. */
function copyButton(label: string, text: () => string): HTMLButtonElement {
  const b = button("Copy", "copy", async () => {
    b.textContent = (await writeClipboard(text())) ? "Copied" : "Copy failed";
    setTimeout(() => (b.textContent = "Copy"), 1500);
  });
  b.setAttribute("aria-label", label);
  return b;
}

/**
 * Puts text on the clipboard. The Clipboard API exists only on secure origins, so a page opened
 * at http://<LAN address> copies the older way, through a selection.
 */
async function writeClipboard(text: string): Promise<boolean> {
  if (navigator.clipboard)
    return navigator.clipboard.writeText(text).then(
      () => true,
      () => false,
    );
  const area = Object.assign(document.createElement("textarea"), { value: text });
  document.body.append(area);
  area.select();
  const copied = document.execCommand("copy");
  area.remove();
  return copied;
}

function statsText(s: AnswerStats): string {
  const parts = [`${s.completionTokens} tokens`];
  if (s.tokensPerSecond !== null) parts.push(`${s.tokensPerSecond.toFixed(1)} tok/s`);
  if (s.timeToFirstTokenMs !== null) parts.push(`first token ${Math.round(s.timeToFirstTokenMs)} ms`);
  parts.push(`${s.cachedTokens} cached`);
  return parts.join(" · ");
}

// ---- sending ----

function requestBody(): Record<string, unknown> {
  const number = (field: HTMLInputElement) => (field.value.trim() === "" ? undefined : Number(field.value));
  // Earlier answers go back without their reasoning (as Open WebUI and llama.cpp's page send
  // them): the model needs what it answered, and the reasoning would fill the context.
  const sent: { role: string; content: string }[] = current.messages.map((m) => ({
    role: m.role,
    content: m.role === "assistant" ? splitReasoning(m.content).content : m.content,
  }));
  // An answer with no text (stopped, or cut off, before its first token) is left out with its
  // question: the question alone would make two user turns in a row, which templates that want
  // turns to alternate (Gemma's, Mistral's) refuse, for every question after in the conversation.
  const unanswered = (m: { role: string; content: string } | undefined) => m?.role === "assistant" && !m.content;
  const messages = sent.filter((m, i) => !unanswered(m) && !(m.role === "user" && unanswered(sent[i + 1])));
  if (ui.system.value.trim()) messages.unshift({ role: "system", content: ui.system.value.trim() });
  const body: Record<string, unknown> = {
    model: ui.model.value,
    messages,
    stream: true,
    stream_options: { include_usage: true },
    temperature: number(ui.temperature),
    top_p: number(ui.topP),
    max_tokens: number(ui.maxTokens),
  };
  if (ui.structured.checked) {
    let schema: unknown;
    try {
      schema = JSON.parse(ui.schema.value);
    } catch (error) {
      throw new Error(`the JSON Schema is not valid JSON: ${(error as Error).message}`);
    }
    body.response_format = { type: "json_schema", json_schema: { name: "answer", schema } };
  }
  return body;
}

/** The note an answer keeps in storage while it is written: what a reload mid-answer finds. */
const UNFINISHED = "unfinished (the page was closed or reloaded while it was written)";
/** What shows in place of UNFINISHED while another tab writes the answer. */
const WRITING_ELSEWHERE = "being written in another tab…";
/** The note on an answer the model's context cut short. */
const CONTEXT_FULL = "cut off: the conversation has filled the model's context";
/** The note on an answer cut short by its model's own answer length (num_predict of its Modelfile or alias). */
const MODEL_ANSWER_LENGTH = "cut off at the model's answer length (its num_predict): set Max tokens for longer answers";
/** How often a streaming answer is saved, so that a reload keeps most of it. */
const SAVE_EVERY_MS = 1000;

async function answer(): Promise<void> {
  // The conversation this answer belongs to, even if another one is opened meanwhile.
  const conversation = current;
  const reply: Message = { role: "assistant", content: "" };
  let body: Record<string, unknown>;
  try {
    body = requestBody();
  } catch (error) {
    reply.note = (error as Error).message;
    conversation.messages.push(reply);
    await persist(conversation);
    return;
  }
  conversation.messages.push(reply);
  conversation.model = ui.model.value;
  const controller = new AbortController();
  running = controller;
  setRunning(true);
  const started = performance.now();
  let firstTokenAt: number | undefined;
  let redraw = 0;
  let savedAt = performance.now();
  let promptTokens = 0;
  try {
    // Saved before the answer comes: the question survives a reload, and opening another chat.
    await persist(conversation, { ...reply, note: UNFINISHED });
    // Drawn off the page when another conversation was opened meanwhile.
    const view =
      (conversation === current && ui.messages.querySelector<HTMLElement>("article.message:last-of-type")) ||
      messageView(reply, conversation.messages.length - 1);
    view.classList.add("streaming");
    const { response, leftOut } = await requestFitting(body, controller.signal);
    if (!response.ok) throw new Error(await errorMessage(response));
    if (leftOut > 0) reply.note = `the ${leftOut} oldest messages were left out to fit the model's context`;
    let finishReason: string | undefined;
    let whole = false;
    for await (const data of events(response)) {
      if (data === "[DONE]") {
        whole = true;
        break;
      }
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message ?? String(chunk.error));
      // The server sends reasoning apart; the message keeps it in <think> tags, as splitReasoning reads them.
      const reasoning: string = chunk.choices?.[0]?.delta?.reasoning_content ?? "";
      const answer: string = chunk.choices?.[0]?.delta?.content ?? "";
      finishReason = chunk.choices?.[0]?.finish_reason ?? finishReason;
      const thinking = reply.content.startsWith("<think>") && !reply.content.includes("</think>");
      const delta =
        (reasoning ? (reply.content ? "" : "<think>") + reasoning : "") +
        (answer && thinking ? "</think>" : "") +
        answer;
      if (delta) {
        firstTokenAt ??= performance.now();
        reply.content += delta;
        // Markdown is re-rendered at most once a frame, however fast tokens come.
        redraw ||= requestAnimationFrame(() => {
          redraw = 0;
          const following = isScrolledToEnd();
          fillMessage(view, reply);
          // Follow the answer only while the reader is at the end: one who scrolled up stays put.
          if (following) ui.messages.scrollTop = ui.messages.scrollHeight;
        });
        if (performance.now() - savedAt > SAVE_EVERY_MS) {
          savedAt = performance.now();
          // Deleted meanwhile (here or in another tab): the answer has nowhere to go, and stops.
          const unfinished = { ...conversation, messages: withLast(conversation, { ...reply, note: UNFINISHED }) };
          void updateConversation(unfinished).then((kept) => kept || controller.abort());
        }
      }
      if (chunk.usage) {
        promptTokens = chunk.usage.prompt_tokens ?? 0;
        const seconds = firstTokenAt === undefined ? 0 : (performance.now() - firstTokenAt) / 1000;
        const tokens = chunk.usage.completion_tokens;
        reply.stats = {
          completionTokens: tokens,
          // The first token's time is the TTFT; the rate is over the tokens after it.
          tokensPerSecond: seconds > 0 && tokens > 1 ? (tokens - 1) / seconds : null,
          timeToFirstTokenMs: firstTokenAt === undefined ? null : firstTokenAt - started,
          cachedTokens: chunk.usage.prompt_tokens_details?.cached_tokens ?? 0,
        };
      }
    }
    // The server ends every answer with [DONE]: a stream that ends without it was cut on the way
    // (a proxy's timeout), and the answer is not whole, however it reads.
    if (!whole) throw new Error("the connection to the server was lost");
    // Cut short, and not by the Max tokens asked for: by the model's context, or by the answer
    // length its Modelfile or alias gives it. Its context, listed once this answer loaded it, tells which.
    const maxTokens = body.max_tokens as number | undefined;
    const answered = reply.stats?.completionTokens ?? 0;
    if (finishReason === "length" && !(maxTokens && answered >= maxTokens)) {
      await refreshModels();
      const context = modelContexts.get(body.model as string);
      const cut = context !== undefined && promptTokens + answered < context ? MODEL_ANSWER_LENGTH : CONTEXT_FULL;
      reply.note = [reply.note, cut].filter(Boolean).join(" · ");
    }
  } catch (error) {
    reply.note = controller.signal.aborted ? "stopped" : `error: ${(error as Error).message}`;
  } finally {
    cancelAnimationFrame(redraw);
    if (running === controller) {
      running = undefined;
      setRunning(false);
    }
    await persist(conversation, undefined, { update: true });
    await refreshModels();
  }
}

/**
 * Asks for the answer, leaving out the oldest turns while the server says the conversation is
 * longer than the model's context (as Ollama cuts a chat to its context): the response, and how
 * many messages were left out. The system prompt and the last question always go.
 */
async function requestFitting(
  body: Record<string, unknown>,
  signal: AbortSignal,
): Promise<{ response: Response; leftOut: number }> {
  const messages = body.messages as { role: string; content: string }[];
  const length = (list: { content: string }[]) => list.reduce((sum, m) => sum + m.content.length, 0);
  for (let leftOut = 0; ; ) {
    const response = await api(
      "v1/chat/completions",
      { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), signal },
      { byUser: true },
    );
    if (response.status !== 400) return { response, leftOut };
    const error = await response
      .clone()
      .json()
      .then((e) => e?.error)
      .catch(() => undefined);
    const first = messages.findIndex((m) => m.role !== "system");
    if (error?.code !== "context_length_exceeded" || first < 0 || first >= messages.length - 1)
      return { response, leftOut };
    // The oldest turns, each its question and what answered it up to the next question: at least
    // one, and as many as hold the share of the text the prompt is over by. A turn at a time, a
    // long conversation took a request per turn (hundreds) before its answer began.
    const over = overShare(String(error.message)) * length(messages);
    let end = first;
    do {
      end++;
      while (end < messages.length - 1 && messages[end]!.role !== "user") end++;
    } while (end < messages.length - 1 && length(messages.slice(first, end)) < over);
    messages.splice(first, end - first);
    leftOut += end - first;
  }
}

/**
 * The share of a prompt over the model's context, from the server's error ("This model's maximum
 * context length is C tokens. However, the prompt is P tokens"): 0 when it does not say.
 */
function overShare(message: string): number {
  const figures = /maximum context length is (\d+) tokens.*?the prompt is (\d+) tokens/.exec(message);
  if (!figures) return 0;
  const [context, prompt] = [Number(figures[1]), Number(figures[2])];
  return prompt >= context ? (prompt - context + 1) / prompt : 0;
}

/** The conversation's messages with the last one replaced by `last` (a copy to save). */
const withLast = (c: Conversation, last: Message): Message[] => [...c.messages.slice(0, -1), last];

/**
 * Saves a conversation (its last message as `last`, if given) and redraws what shows it. With
 * `update` (an answer's last save) only one still stored: deleted while its answer was written,
 * here or in another tab, it stays deleted.
 */
async function persist(conversation = current, last?: Message, o: { update?: boolean } = {}): Promise<void> {
  conversation.updatedAt = Date.now();
  if (conversation.title === "New chat") {
    const question = conversation.messages.find((m) => m.role === "user")?.content ?? "";
    // Cut by code points: a cut by UTF-16 units can halve an emoji, which then shows as "�".
    conversation.title = Array.from(question).slice(0, 48).join("") || "New chat";
  }
  const saved = last ? { ...conversation, messages: withLast(conversation, last) } : conversation;
  const kept = o.update ? await updateConversation(saved) : (await saveConversation(saved), true);
  if (conversation !== current) return showList();
  if (kept) localStorage.setItem("mlx.conversation", conversation.id);
  await showConversation();
}

function isScrolledToEnd(): boolean {
  const m = ui.messages;
  return m.scrollHeight - m.scrollTop - m.clientHeight < 24;
}

function setRunning(on: boolean): void {
  const buttonFocused = document.activeElement === ui.send || document.activeElement === ui.stop;
  ui.send.hidden = on;
  ui.stop.hidden = !on;
  document.body.classList.toggle("running", on);
  // Screen readers wait for the answer to end rather than read it again at every redraw.
  ui.messages.setAttribute("aria-busy", String(on));
  // The button just used is hidden now: the focus goes back to the message, not to the page.
  if (buttonFocused) ui.input.focus();
}

function stop(): void {
  running?.abort();
}

/**
 * The tab that writes an answer holds a Web Lock named after its conversation until the answer
 * ends (the browser lets it go when the tab is closed or reloaded). Each tab saves its whole copy
 * of a conversation: another tab that sent or regenerated meanwhile would, saving after,
 * drop that answer's end or the turns that follow it. Web Locks exist on secure origins only
 * (localhost, https): a page opened at http://<LAN address> goes unguarded.
 */
const answerLock = (conversationId: string) => `mlx-chat-answer:${conversationId}`;
const WRITTEN_ELSEWHERE =
  "An answer to this conversation is being written in another tab: wait for it to end, or stop it there.";

/** Takes the conversation's lock: a function that lets it go, or null while another tab holds it. */
function lockConversation(conversationId: string): Promise<(() => void) | null> {
  if (!navigator.locks) return Promise.resolve(() => {});
  return new Promise((resolve) => {
    void navigator.locks.request(answerLock(conversationId), { ifAvailable: true }, (lock) =>
      lock ? new Promise<void>((release) => resolve(release)) : resolve(null),
    );
  });
}

/** Whether another tab writes an answer to this conversation now (it holds the lock). */
async function writtenElsewhere(conversationId: string): Promise<boolean> {
  if (!navigator.locks) return false;
  const { held = [] } = await navigator.locks.query();
  return held.some((lock) => lock.name === answerLock(conversationId));
}

/** Set while a turn waits for its lock, so that a double click does not start a second one. */
let taking = false;
/**
 * This tab's last turn, until its answer is saved and its lock let go (Send shows again as soon
 * as the answer ends): a question sent meanwhile waits for it, rather than find the lock taken.
 */
let lastTurn: Promise<void> = Promise.resolve();

/** Changes the conversation and answers (`turn`) under its lock; says so when another tab holds it. */
async function takeTurn(turn: () => Promise<void>): Promise<void> {
  if (running || taking) return;
  taking = true;
  const release = await lastTurn.then(() => lockConversation(current.id)).finally(() => (taking = false));
  if (!release) {
    ui.notice.textContent = WRITTEN_ELSEWHERE;
    ui.notice.hidden = false;
    return;
  }
  if (ui.notice.textContent === WRITTEN_ELSEWHERE) ui.notice.hidden = true;
  const done = turn().finally(release);
  lastTurn = done.catch(() => {});
  await done;
}

async function sendInput(): Promise<void> {
  const text = ui.input.value.trim();
  if (!text) return;
  await takeTurn(async () => {
    ui.input.value = "";
    current.messages.push({ role: "user", content: text });
    await answer();
  });
}

async function regenerate(): Promise<void> {
  const endsInAnswer = () => current.messages.at(-1)?.role === "assistant";
  if (!endsInAnswer()) return;
  await takeTurn(async () => {
    // Looked at again: another tab may have changed the conversation while the lock was taken.
    if (!endsInAnswer()) return;
    current.messages.pop();
    await answer();
  });
}

/**
 * Takes the last question back into the composer (dropping its answer) to be changed and sent.
 * Saved only when the changed question is sent (under the conversation's lock): until then a
 * reload, opening another conversation, or another tab's save finds the turn as it was.
 */
async function editLast(): Promise<void> {
  if (running) return;
  while (current.messages.at(-1)?.role === "assistant") current.messages.pop();
  const question = current.messages.pop();
  if (!question) return;
  ui.input.value = question.content;
  ui.input.focus();
  await showConversation();
}

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  void sendInput();
});
ui.input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    void sendInput();
  }
});
document.addEventListener("keydown", (event) => {
  // Esc in the API key dialog closes the dialog only: the question it was asked for then fails, saying why.
  if (event.key === "Escape" && running && !(event.target as Element | null)?.closest?.("dialog")) stop();
});
ui.stop.addEventListener("click", stop);

// ---- start ----

keyControl($<HTMLButtonElement>("#api-key"), () => void refreshModels());

// Said above the conversation (which is drawn after, and would wipe it from the messages).
await refreshModels();
const last = localStorage.getItem("mlx.conversation");
if (last && (await getConversation(last))) await openConversation(last);
else await showConversation();
ui.input.focus();
document.body.dataset.ready = "1";
