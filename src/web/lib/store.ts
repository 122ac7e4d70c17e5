// Conversations kept in this browser (IndexedDB, through idb).
import { openDB } from "idb";

export interface AnswerStats {
  completionTokens: number;
  tokensPerSecond: number | null;
  timeToFirstTokenMs: number | null;
  cachedTokens: number;
}

export interface Message {
  role: "user" | "assistant";
  content: string;
  stats?: AnswerStats;
  /** Why the answer ended early (stopped, or an error message). */
  note?: string;
}

export interface Conversation {
  id: string;
  title: string;
  model: string;
  messages: Message[];
  updatedAt: number;
}

/**
 * A new conversation id. crypto.randomUUID exists on secure origins only (localhost, https): a
 * page opened at http://<LAN address> makes the same kind of id (UUID v4) from getRandomValues.
 */
export function newConversationId(): string {
  if (typeof crypto.randomUUID === "function") return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6]! & 0x0f) | 0x40; // version 4
  bytes[8] = (bytes[8]! & 0x3f) | 0x80; // variant 1
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

const db = openDB("mlx-chat", 1, {
  upgrade(d) {
    d.createObjectStore("conversations", { keyPath: "id" });
  },
});

export async function listConversations(): Promise<Conversation[]> {
  const all: Conversation[] = await (await db).getAll("conversations");
  return all.sort((a, b) => b.updatedAt - a.updatedAt);
}

export const getConversation = async (id: string): Promise<Conversation | undefined> =>
  (await db).get("conversations", id);

// Other tabs of this page share the database: each change is announced to them, so that none
// keeps showing (and then saves over) a conversation another tab has moved on.
const changes = new BroadcastChannel("mlx-chat-conversations");

export async function saveConversation(c: Conversation): Promise<void> {
  await (await db).put("conversations", c);
  changes.postMessage(c.id);
}

/**
 * Saves a conversation only if it is still stored (not deleted meanwhile, here or in another
 * tab), in one transaction: whether it was.
 */
export async function updateConversation(c: Conversation): Promise<boolean> {
  const tx = (await db).transaction("conversations", "readwrite");
  const kept = (await tx.store.getKey(c.id)) !== undefined;
  if (kept) await tx.store.put(c);
  await tx.done;
  if (kept) changes.postMessage(c.id);
  return kept;
}

export async function deleteConversation(id: string): Promise<void> {
  await (await db).delete("conversations", id);
  changes.postMessage(id);
}

/** Calls `listener` with the id of each conversation another tab saved or deleted. */
export function onChangeElsewhere(listener: (id: string) => void): void {
  changes.addEventListener("message", (event: MessageEvent<string>) => listener(event.data));
}

function isAnswerStats(value: unknown): value is AnswerStats {
  const s = value as Record<keyof AnswerStats, unknown> | null;
  const count = (v: unknown) => typeof v === "number" && Number.isFinite(v);
  return (
    typeof s === "object" &&
    s !== null &&
    count(s.completionTokens) &&
    count(s.cachedTokens) &&
    (s.tokensPerSecond === null || count(s.tokensPerSecond)) &&
    (s.timeToFirstTokenMs === null || count(s.timeToFirstTokenMs))
  );
}

/** A conversation read from an exported file, or an error saying what is wrong with it. */
export function parseConversation(value: unknown): Conversation {
  const c = value as Partial<Conversation>;
  if (!c || typeof c !== "object" || !Array.isArray(c.messages))
    throw new Error("not an exported conversation (no messages)");
  const messages = c.messages.map((m, i) => {
    if (!m || (m.role !== "user" && m.role !== "assistant") || typeof m.content !== "string")
      throw new Error(`message ${i + 1} needs a role (user or assistant) and text content`);
    // Drawn as they are: other figures would throw, at every load once the conversation is saved.
    if (m.stats !== undefined && !isAnswerStats(m.stats))
      throw new Error(`message ${i + 1} has stats that are not the figures this page exports`);
    return {
      role: m.role,
      content: m.content,
      ...(m.stats ? { stats: m.stats } : {}),
      ...(m.note ? { note: String(m.note) } : {}),
    };
  });
  return {
    id: newConversationId(),
    title: String(c.title ?? "Imported"),
    model: String(c.model ?? ""),
    messages,
    updatedAt: Date.now(),
  };
}
