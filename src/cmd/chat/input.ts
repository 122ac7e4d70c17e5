// Reading what the user types: line editing and history (persisted across sessions),
// multi-line input between """ fences, bracketed paste, and Ctrl-C / Ctrl-D at the prompt.
// When stdin is not a terminal, it reads plain lines.
import { createInterface, type Interface } from "node:readline";
import { Transform, type TransformCallback } from "node:stream";
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { fileErrorReason } from "../../format";
import { dirname } from "node:path";

const pasteStart = "\x1b[200~";
const pasteEnd = "\x1b[201~";
// Stands for a newline inside a paste while readline edits it as one line (shown as ↵).
const pastedNewline = "\u21b5";
const fence = '"""';
const historyLimit = 1000;
/** Ctrl-C inside a """ block: the block is dropped, and the prompt comes back. */
const cancelBlock = Symbol("cancel block");
type Line = string | null | typeof cancelBlock;

/**
 * A message as read. Only a line typed alone can be a slash command: a """ block or a paste of
 * several lines is text to send whatever it starts with (code opening with // or a path), as in Ollama.
 */
export interface Message {
  text: string;
  command: boolean;
}

export class LineInput {
  readonly interactive: boolean;
  readonly #rl: Interface;
  /** What readline reads in a terminal: stdin piped through the bracketed-paste filter. */
  readonly #terminalInput?: Transform;
  readonly #queue: Line[] = [];
  #waiting?: (line: Line) => void;
  // Piped input can end (and readline close) while queued lines are still to be answered.
  #closed = false;
  #inBlock = false;
  /** The lines typed in this chat, oldest first, as readline adds them to its history. */
  readonly #typed: string[] = [];

  constructor(private readonly historyFile: string) {
    this.interactive = Boolean(process.stdin.isTTY && process.stdout.isTTY);
    if (this.interactive) this.#terminalInput = pasteAwareStdin();
    this.#rl = createInterface({
      input: this.#terminalInput ?? process.stdin,
      output: this.interactive ? process.stdout : undefined,
      terminal: this.interactive,
      history: this.interactive ? loadHistory(historyFile) : [],
      historySize: historyLimit,
      removeHistoryDuplicates: true,
    });
    this.#rl.on("line", (line) => {
      if (this.interactive && line.length > 0) this.#typed.push(line);
      this.#push(line);
    });
    this.#rl.on("close", () => {
      this.#closed = true;
      this.#push(null);
    });
    // Ctrl-C at the prompt: drop a """ block being written, clear a half-typed line, or leave at an empty one.
    this.#rl.on("SIGINT", () => {
      if (this.#inBlock) {
        process.stdout.write("^C\n");
        this.#rl.write(null, { ctrl: true, name: "u" });
        this.#push(cancelBlock);
      } else if (this.#rl.line.length > 0) {
        process.stdout.write("^C\n");
        this.#rl.write(null, { ctrl: true, name: "u" });
        this.#rl.prompt();
      } else this.#rl.close();
    });
    if (this.interactive) process.stdout.write("\x1b[?2004h"); // ask the terminal to mark pastes
  }

  #push(line: Line): void {
    if (this.#waiting) {
      const resolve = this.#waiting;
      this.#waiting = undefined;
      resolve(line);
    } else this.#queue.push(line);
  }

  #nextLine(prompt: string): Promise<Line> {
    if (this.interactive && !this.#closed) {
      this.#rl.setPrompt(prompt);
      this.#rl.prompt();
    }
    if (this.#queue.length > 0) return Promise.resolve(this.#queue.shift()!);
    // The end of input stays the end: a read after the one that saw it must not wait forever.
    if (this.#closed) return Promise.resolve(null);
    return new Promise((resolve) => (this.#waiting = resolve));
  }

  /** One message: a line, a """-fenced block, or a bracketed paste. null at the end of input; empty text for a dropped block. */
  async read(prompt = ">>> ", continuation = "... "): Promise<Message | null> {
    let first = await this.#nextLine(prompt);
    while (first === cancelBlock) first = await this.#nextLine(prompt); // a Ctrl-C that came after its block ended
    if (first === null) return null;
    if (first.trimStart().startsWith(fence)) {
      const block = await this.#fenced(first.trimStart().slice(fence.length), continuation);
      return block === null ? null : { text: block === cancelBlock ? "" : block, command: false };
    }
    const command = !first.includes(pastedNewline);
    // A system prompt of several lines, as in Ollama: /set system """ opens a block that is its value.
    const systemBlock = command ? /^\/set\s+system\s+"""/.exec(first) : null;
    if (systemBlock) {
      const block = await this.#fenced(first.slice(systemBlock[0].length), continuation);
      if (block === null) return null;
      return block === cancelBlock ? { text: "", command: false } : { text: `/set system ${block}`, command };
    }
    return { text: first.replaceAll(pastedNewline, "\n"), command };
  }

  /** The text of a """ block; null at the end of input, cancelBlock when Ctrl-C dropped it. */
  async #fenced(firstLine: string, continuation: string): Promise<string | null | typeof cancelBlock> {
    const lines: string[] = [];
    this.#inBlock = true;
    try {
      for (let line: Line = firstLine; ; line = await this.#nextLine(continuation)) {
        if (line === cancelBlock) return cancelBlock;
        // Ctrl-D in a terminal leaves without sending the block; piped input that ends inside one answers it.
        if (line === null) return this.interactive ? null : lines.join("\n").trim();
        if (line.trimEnd().endsWith(fence)) {
          lines.push(line.trimEnd().slice(0, -fence.length));
          return lines.join("\n").trim();
        }
        lines.push(line);
      }
    } finally {
      this.#inBlock = false;
    }
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

  /**
   * Runs `use` (a command that draws its own prompt: /model's picker) with the terminal's keys
   * its alone: fed to readline too, they would edit the line behind it and send it (an Up, then
   * the Enter that picks, would run the recalled command again).
   */
  async lendTerminal<T>(use: () => Promise<T>): Promise<T> {
    const input = this.#terminalInput;
    if (!input || this.#closed) return use();
    process.stdin.unpipe(input);
    this.#rl.pause();
    // A Ctrl-C while the command runs (a model loading) is ignored: in raw mode it would wait in
    // stdin and reach the prompt afterwards as a Ctrl-C there, which leaves the chat. In cooked
    // mode (the picker sets raw mode while it draws) the terminal makes it a signal and drops it.
    process.stdin.setRawMode(false);
    const ignore = () => {};
    process.on("SIGINT", ignore);
    try {
      return await use();
    } finally {
      process.off("SIGINT", ignore);
      // Readline edits in raw mode.
      process.stdin.setRawMode(true);
      process.stdin.pipe(input);
      this.#rl.resume();
    }
  }

  close(): void {
    if (this.interactive) {
      process.stdout.write("\x1b[?2004l");
      saveHistory(this.historyFile, this.#typed);
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
function pasteAwareStdin(): Transform {
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
  try {
    return readHistory(file);
  } catch (error) {
    // History is a convenience: one that cannot be read (a directory, no permission) must not stop the chat.
    process.stderr.write(
      `note: cannot read the chat history ${file}: ${fileErrorReason(error)}; starting without it\n`,
    );
    return [];
  }
}

/** The history on disk, newest first. */
function readHistory(file: string): string[] {
  const text = existsSync(file) ? readFileSync(file, "utf8") : "";
  // Stored oldest first, one JSON string per line; readline wants newest first. Lines that are
  // not a JSON string (a file edited by hand, cut short) are skipped: readline cannot recall them.
  return text
    .split("\n")
    .filter(Boolean)
    .flatMap((line) => {
      try {
        const entry: unknown = JSON.parse(line);
        return typeof entry === "string" ? [entry] : [];
      } catch {
        return [];
      }
    })
    .reverse();
}

/**
 * This chat's lines added to the history on disk as it is now: another chat that left since this
 * one started keeps its lines (a whole history kept in memory would write over them).
 */
function saveHistory(file: string, typed: string[]): void {
  let saved: string[] = [];
  try {
    saved = readHistory(file);
  } catch {
    // unreadable: this chat's lines start it anew
  }
  // As readline's removeHistoryDuplicates: a line typed again moves to the front.
  const newestFirst = [...new Set([...typed.toReversed(), ...saved])];
  // Written whole to a file of its own, then renamed over the old one: a chat that dies while
  // writing leaves the old history, never half of it; and readable by its owner alone, as
  // shells and Ollama keep theirs, since what was typed may be private.
  const temporary = `${file}.${process.pid}.tmp`;
  try {
    mkdirSync(dirname(file), { recursive: true });
    const lines = newestFirst
      .slice(0, historyLimit)
      .reverse()
      .map((entry) => JSON.stringify(entry));
    writeFileSync(temporary, lines.length ? `${lines.join("\n")}\n` : "", { mode: 0o600 });
    renameSync(temporary, file);
  } catch {
    // History is a convenience: a read-only or full disk must not break leaving the chat.
    rmSync(temporary, { force: true });
  }
}
