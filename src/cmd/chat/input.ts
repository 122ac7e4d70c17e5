// Reading what the user types: line editing and history (persisted across sessions),
// multi-line input between """ fences, bracketed paste, and Ctrl-C / Ctrl-D at the prompt.
// When stdin is not a terminal, it reads plain lines.
import { createInterface, type Interface } from "node:readline";
import { Transform, type TransformCallback } from "node:stream";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";

const pasteStart = "\x1b[200~";
const pasteEnd = "\x1b[201~";
// Stands for a newline inside a paste while readline edits it as one line (shown as ↵).
const pastedNewline = "\u21b5";
const fence = '"""';
const historyLimit = 1000;

export class LineInput {
  readonly interactive: boolean;
  readonly #rl: Interface;
  readonly #queue: (string | null)[] = [];
  #waiting?: (line: string | null) => void;
  // Piped input can end (and readline close) while queued lines are still to be answered.
  #closed = false;

  constructor(private readonly historyFile: string) {
    this.interactive = Boolean(process.stdin.isTTY && process.stdout.isTTY);
    this.#rl = createInterface({
      input: this.interactive ? pasteAwareStdin() : process.stdin,
      output: this.interactive ? process.stdout : undefined,
      terminal: this.interactive,
      history: this.interactive ? loadHistory(historyFile) : [],
      historySize: historyLimit,
      removeHistoryDuplicates: true,
    });
    this.#rl.on("line", (line) => this.#push(line));
    this.#rl.on("close", () => {
      this.#closed = true;
      this.#push(null);
    });
    // Ctrl-C at the prompt: clear a half-typed line, or leave at an empty one.
    this.#rl.on("SIGINT", () => {
      if (this.#rl.line.length > 0) {
        process.stdout.write("^C\n");
        this.#rl.write(null, { ctrl: true, name: "u" });
        this.#rl.prompt();
      } else this.#rl.close();
    });
    if (this.interactive) process.stdout.write("\x1b[?2004h"); // ask the terminal to mark pastes
  }

  #push(line: string | null): void {
    if (this.#waiting) {
      const resolve = this.#waiting;
      this.#waiting = undefined;
      resolve(line);
    } else this.#queue.push(line);
  }

  #nextLine(prompt: string): Promise<string | null> {
    if (this.interactive && !this.#closed) {
      this.#rl.setPrompt(prompt);
      this.#rl.prompt();
    }
    if (this.#queue.length > 0) return Promise.resolve(this.#queue.shift()!);
    return new Promise((resolve) => (this.#waiting = resolve));
  }

  /** One message: a line, a """-fenced block, or a bracketed paste. null at the end of input. */
  async read(prompt = ">>> ", continuation = "... "): Promise<string | null> {
    const first = await this.#nextLine(prompt);
    if (first === null) return null;
    if (first.trimStart().startsWith(fence)) return this.#fenced(first.trimStart().slice(fence.length), continuation);
    return first.replaceAll(pastedNewline, "\n");
  }

  async #fenced(firstLine: string, continuation: string): Promise<string | null> {
    const lines: string[] = [];
    let line: string | null = firstLine;
    while (line !== null) {
      if (line.trimEnd().endsWith(fence)) {
        lines.push(line.trimEnd().slice(0, -fence.length));
        break;
      }
      lines.push(line);
      line = await this.#nextLine(continuation);
    }
    return lines.join("\n").trim();
  }

  /** While an answer streams: let Ctrl-C reach the process as a signal instead of readline. */
  pauseForAnswer(): void {
    if (this.#closed) return;
    this.#rl.pause();
    process.stdin.pause();
    if (this.interactive) process.stdin.setRawMode(false);
  }

  resumeAfterAnswer(): void {
    if (this.#closed) return;
    if (this.interactive) process.stdin.setRawMode(true);
    process.stdin.resume();
    this.#rl.resume();
  }

  close(): void {
    if (this.interactive) {
      process.stdout.write("\x1b[?2004l");
      saveHistory(this.historyFile, (this.#rl as unknown as { history: string[] }).history ?? []);
    }
    if (!this.#closed) this.#rl.close();
    // Let go of the terminal so the process can exit.
    process.stdin.unpipe();
    process.stdin.pause();
  }
}

/**
 * stdin as readline should see it: a bracketed paste (the terminal wraps it in ESC[200~ …
 * ESC[201~) becomes one line, its newlines replaced by a placeholder, so pasting a block
 * does not send each of its lines as a message.
 */
function pasteAwareStdin(): NodeJS.ReadableStream {
  let pasting = false;
  const transform = new Transform({
    transform(chunk: Buffer, _encoding: string, done: TransformCallback) {
      let text = chunk.toString("utf8");
      let out = "";
      while (text.length > 0) {
        const marker = pasting ? pasteEnd : pasteStart;
        const at = text.indexOf(marker);
        const part = at < 0 ? text : text.slice(0, at);
        out += pasting ? part.replace(/\r\n|\r|\n/g, pastedNewline) : part;
        if (at < 0) break;
        pasting = !pasting;
        text = text.slice(at + marker.length);
      }
      done(null, out);
    },
  });
  // readline drives the terminal through its input: forward what it needs to the real stdin.
  Object.assign(transform, { isTTY: true, setRawMode: (mode: boolean) => process.stdin.setRawMode(mode) });
  process.stdin.pipe(transform);
  return transform;
}

function loadHistory(file: string): string[] {
  if (!existsSync(file)) return [];
  // Stored oldest first, one JSON string per line; readline wants newest first.
  return readFileSync(file, "utf8")
    .split("\n")
    .filter(Boolean)
    .flatMap((line) => {
      try {
        return [JSON.parse(line) as string];
      } catch {
        return [];
      }
    })
    .reverse();
}

function saveHistory(file: string, newestFirst: string[]): void {
  try {
    mkdirSync(dirname(file), { recursive: true });
    const lines = newestFirst
      .slice(0, historyLimit)
      .reverse()
      .map((entry) => JSON.stringify(entry));
    writeFileSync(file, lines.length ? `${lines.join("\n")}\n` : "");
  } catch {
    // History is a convenience: a read-only or full disk must not break leaving the chat.
  }
}
