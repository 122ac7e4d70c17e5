// Reading what the user types: line editing and history (persisted across sessions),
// multi-line input between """ fences, bracketed paste, and Ctrl-C / Ctrl-D at the prompt.
// When stdin is not a terminal, it reads plain lines.
import { createInterface, type Interface } from "node:readline";
import { PassThrough, type Readable, Transform, type TransformCallback } from "node:stream";
import { StringDecoder } from "node:string_decoder";
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
const ctrlC = 0x03;
/** Enter (Ctrl-M), and Ctrl-J, which readline takes as Enter too. */
const lineEnds = [0x0d, 0x0a];
const keysSettleMs = 20;

/** Lends the terminal's keys to a command's own prompt (/model's picker) while `prompt` runs. */
export type KeyLender = <T>(prompt: (keys: Readable) => Promise<T>) => Promise<T>;

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
  /** What readline reads in a terminal: the keys typed at the prompt, through the bracketed-paste filter. */
  readonly #terminalInput?: PasteAwareInput;
  /**
   * Where the terminal's keys go. The terminal stays in raw mode throughout, so every key is a
   * byte read here: at the prompt readline gets them; while an answer or a command runs they are
   * held for the prompt that follows (type-ahead, and a Ctrl-D typed meanwhile still leaves),
   * except Ctrl-C, which stops the answer, waits behind a line typed ahead for the answer that
   * line starts, or is dropped; a command's own prompt gets its own stream.
   */
  #keysTo: "readline" | "held" | PassThrough = "readline";
  #heldKeys: Buffer[] = [];
  #onCtrlC?: () => void;
  readonly #readKeys = (chunk: Buffer) => this.#routeKeys(chunk);
  readonly #queue: Line[] = [];
  #waiting?: (line: Line) => void;
  // Piped input can end (and readline close) while queued lines are still to be answered.
  #closed = false;
  #inBlock = false;
  /** A line was sent (Enter) and no prompt has been shown since: what it starts has not begun yet. */
  #lineSent = false;
  /** Lines (and ends of input, dropped blocks) given to #nextLine so far, and of them taken. */
  #linesSent = 0;
  #linesRead = 0;
  /**
   * A Ctrl-C readline saw after a line's Enter, before what the line starts took the keys (both
   * came in one read of the terminal, or were held for the prompt together): which line it came after, counted as #linesRead counts
   * them. Once that line is read, it stops the answer the line asks for, is dropped as the
   * command's, or acts as typed at the next prompt. Taken as at the prompt, it found the line empty
   * and left the chat, and the answer ran on, unstoppable; one after a """ block's last line went
   * to the block, already closed.
   */
  #ctrlCAfterLine?: number;

  constructor(private readonly historyFile: string) {
    this.interactive = Boolean(process.stdin.isTTY && process.stdout.isTTY);
    if (this.interactive) {
      this.#terminalInput = pasteAwareInput();
      process.stdin.on("data", this.#readKeys);
    }
    try {
      this.#rl = createInterface({
        input: this.#terminalInput ?? process.stdin,
        output: this.interactive ? process.stdout : undefined,
        terminal: this.interactive,
        history: this.interactive ? loadHistory(historyFile) : [],
        historySize: historyLimit,
        removeHistoryDuplicates: true,
      });
    } catch (error) {
      // Stdin that cannot be read (`mlx chat < somedir`), said as mlx run says it, not as Bun's "EISDIR: ..., fstat".
      throw new Error(`cannot read stdin: ${fileErrorReason(error)}`);
    }
    this.#rl.on("line", (line) => {
      // On disk at once, as Ollama keeps it: a chat that ends without leaving (its terminal
      // closed, a kill) kept none of its lines when they were written on the way out.
      if (this.interactive && line.length > 0) saveHistory(this.historyFile, line);
      this.#lineSent = true;
      this.#push(line);
    });
    this.#rl.on("close", () => {
      this.#closed = true;
      this.#push(null);
    });
    // Back from Ctrl-Z (fg): readline pauses its input as it comes back and leaves resuming it to
    // us; left paused, the chat took no more keys.
    this.#rl.on("SIGCONT", () => this.#rl.resume());
    this.#rl.on("SIGINT", () => {
      if (this.#lineSent) this.#ctrlCAfterLine = this.#linesSent;
      else this.#ctrlCAtPrompt();
    });
    if (this.interactive) process.stdout.write("\x1b[?2004h"); // ask the terminal to mark pastes
  }

  /**
   * Ctrl-C at the prompt: drops a """ block being written, clears a half-typed line, or at an
   * empty one says how to leave, as Ollama does. It left the chat there: a Ctrl-C pressed twice to
   * stop an answer, the second once the prompt was back, lost the conversation.
   */
  #ctrlCAtPrompt(): void {
    process.stdout.write("^C\n");
    if (this.#inBlock) {
      this.#clearLine();
      this.#push(cancelBlock);
      return;
    }
    if (this.#rl.line.length > 0) this.#clearLine();
    else process.stdout.write("Ctrl-D or /bye leaves the chat\n");
    this.#rl.prompt();
  }

  /** Empties the line being typed (Ctrl-U), before the prompt is drawn again. */
  #clearLine(): void {
    this.#rl.write(null, { ctrl: true, name: "u" });
    // readline in a dumb terminal (TERM=dumb) takes no editing keys, Ctrl-U included: its line is
    // emptied by hand. Left, the text a Ctrl-C cleared from the screen went out with the next line.
    if (this.#rl.line.length > 0) Object.assign(this.#rl, { line: "", cursor: 0 });
  }

  /** Whether a Ctrl-C came right after the line last read (see #ctrlCAfterLine); it is taken. */
  #takeCtrlCAfterLine(): boolean {
    if (this.#ctrlCAfterLine === undefined || this.#linesRead < this.#ctrlCAfterLine) return false;
    this.#ctrlCAfterLine = undefined;
    return true;
  }

  #push(line: Line): void {
    this.#linesSent++;
    if (this.#waiting) {
      const resolve = this.#waiting;
      this.#waiting = undefined;
      this.#linesRead++;
      resolve(line);
    } else this.#queue.push(line);
  }

  async #nextLine(prompt: string): Promise<Line> {
    this.#lineSent = false;
    const ctrlCAfterLine = this.#takeCtrlCAfterLine();
    if (this.interactive && !this.#closed) {
      // Work that held the event loop (a model loading, a file read) leaves the keys typed
      // meanwhile unread in the terminal: a turn for them to arrive while they are still held.
      const held = this.#keysTo === "held";
      if (held) {
        // Where the held keys go on after their first line, keys that come later are held behind
        // them anyway: no turn to wait (each line of a block pasted without bracketed paste waited one).
        if (!this.#heldKeysGoOn()) await Bun.sleep(keysSettleMs);
        this.#rl.resume();
      }
      this.#rl.setPrompt(prompt);
      // The cursor kept where it is: keys that came with the last line's Enter (typed ahead of this
      // prompt) are readline's line already, and a cursor moved back to its start left them there
      // when a Ctrl-C then cleared "the line before the cursor" (they reached the next prompt).
      this.#rl.prompt(true);
      // The line sent before it started nothing (an empty line, a line of a """ block): the Ctrl-C
      // that came with it acts as typed at this prompt, once it is drawn. Taken before, what it
      // wrote went under the last line, and the prompt it drew was drawn again below.
      if (ctrlCAfterLine) this.#ctrlCAtPrompt();
      // After the prompt, as if typed at it: a line typed ahead shows behind it, and is sent by its Enter.
      if (held) this.#releaseKeys();
    }
    if (this.#queue.length > 0) {
      this.#linesRead++;
      return this.#queue.shift()!;
    }
    // The end of input stays the end: a read after the one that saw it must not wait forever.
    if (this.#closed) return null;
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
      for (let next: Line = firstLine; ; next = await this.#nextLine(continuation)) {
        if (next === cancelBlock) return cancelBlock;
        // Ctrl-D in a terminal leaves without sending the block; piped input that ends inside one answers it.
        if (next === null) return this.interactive ? null : lines.join("\n").trim();
        // A pasted line holds several: its own newlines, not placeholders, go to the model, and
        // a paste that ends with the closing fence's line break still closes the block.
        const line = next.replaceAll(pastedNewline, "\n");
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

  #routeKeys(chunk: Buffer): void {
    const to = this.#keysTo;
    if (to === "readline") this.#typeAtPrompt(chunk);
    else if (to !== "held") to.write(chunk);
    else
      for (let start = 0; start < chunk.length; ) {
        const at = chunk.indexOf(ctrlC, start);
        const end = at < 0 ? chunk.length : at;
        if (end > start) this.#heldKeys.push(chunk.subarray(start, end));
        if (at < 0) break;
        if (this.#onCtrlC) this.#onCtrlC();
        // Nothing to stop yet, but a line typed ahead with its Enter will start an answer: kept
        // behind it, the Ctrl-C stops that answer (see #ctrlCAfterLine). Dropped, it let the
        // answer run on. Else dropped: it is not one typed at the prompt.
        else if (this.#heldKeys.some((keys) => lineEnds.some((end) => keys.includes(end))))
          this.#heldKeys.push(chunk.subarray(at, at + 1));
        start = at + 1;
      }
  }

  /**
   * Gives readline the keys up to the end of the first line they send; those after it are held as
   * if typed ahead, for the prompts that follow. A terminal without bracketed paste sends a pasted
   * block as typed, each line break an Enter, in one read: given whole, readline sent every line
   * at once, wrote them all under the first before its answer, and the next prompt answered one
   * of them while showing another. Held, each line is a message at its own prompt, as Ollama reads them.
   */
  #typeAtPrompt(chunk: Buffer): void {
    const input = this.#terminalInput!;
    // A read that goes on with a bracketed paste (a line break inside it ends no line), whose end
    // marker the last read may have cut.
    const carry = Buffer.from(input.pasteCarry ?? "");
    const end = firstLineEnd(Buffer.concat([carry, chunk]), input.pasteCarry !== undefined) - carry.length;
    this.#toReadline(chunk.subarray(0, end));
    if (end === chunk.length) return;
    this.#keysTo = "held";
    this.#routeKeys(chunk.subarray(end));
  }

  /** Holds the keys typed from now on (Ctrl-C calls `onCtrlC`, or see #routeKeys) until the next prompt. */
  #holdKeys(onCtrlC?: () => void): void {
    this.#keysTo = "held";
    this.#onCtrlC = onCtrlC;
    // Paused, readline leaves the screen alone (it redraws its line when the terminal is resized).
    this.#rl.pause();
  }

  /**
   * Gives readline the keys held meanwhile up to the end of the first line they send, and, where
   * that was all, those typed from now on. The lines after it stay held for the prompts after
   * the answer (or command) it starts: given at once, readline wrote each of them under the
   * first, before its answer, and the prompt they belong to was left empty.
   */
  #releaseKeys(): void {
    const held = Buffer.concat(this.#heldKeys);
    const end = firstLineEnd(held);
    this.#heldKeys = end < held.length ? [held.subarray(end)] : [];
    if (this.#heldKeys.length === 0) this.#keysTo = "readline";
    this.#onCtrlC = undefined;
    if (end > 0) this.#toReadline(held.subarray(0, end));
  }

  /**
   * Gives readline keys from the terminal, and draws its line again where they were several. Of
   * the characters that come in one read, readline writes all but the last as they come, without
   * keeping track of where they take the cursor (its quick path for pasted text): typed in the
   * middle of the line they wrote over the text after the cursor, and past the terminal's width,
   * the next redraw (Home, an edit further back) started a row too low, leaving the line's first
   * rows on the screen above it. A bracketed paste always comes so.
   */
  #toReadline(keys: Buffer): void {
    const linesSent = this.#linesSent;
    this.#terminalInput!.write(keys);
    const rl = this.#rl as Interface & { prevRows: number; _refreshLine(): void };
    // Once a line is sent (or the chat is left), the next prompt draws what is left; a dumb
    // terminal's readline draws no lines again.
    if (this.#closed || this.#linesSent !== linesSent || rl.line.length === 0 || process.env.TERM === "dumb") return;
    if ([...keys.toString("utf8")].length < 2) return; // one key: tracked
    // Where the characters written took the cursor: the row of the line's cursor, as its text is right.
    rl.prevRows = rl.getCursorPos().rows;
    rl._refreshLine();
  }

  /** Whether the keys held hold more than their first line (#releaseKeys leaves the rest held). */
  #heldKeysGoOn(): boolean {
    const held = Buffer.concat(this.#heldKeys);
    return firstLineEnd(held) < held.length;
  }

  /** While an answer streams: Ctrl-C calls `stop`; other keys wait for the next prompt. */
  pauseForAnswer(stop: () => void): void {
    if (this.interactive && !this.#closed) this.#holdKeys(stop);
    // Typed before the answer began: it stops it at once, as in Ollama.
    if (this.#takeCtrlCAfterLine()) stop();
  }

  /** The answer is over: a Ctrl-C before the next prompt has nothing to stop (but a line typed ahead's answer). */
  resumeAfterAnswer(): void {
    this.#onCtrlC = undefined;
  }

  /**
   * Runs a command. A Ctrl-C typed meanwhile (a model loading) is dropped, rather than reaching
   * the prompt afterwards as typed there; other keys wait for the prompt. The command gets a
   * KeyLender for a prompt of its own, whose keys are that prompt's alone: fed to readline too,
   * they would edit the line behind it and send it (an Up, then the Enter that picks, would run
   * the recalled command again). Without a terminal it gets none.
   */
  async runCommand<T>(command: (lendKeys?: KeyLender) => Promise<T>): Promise<T> {
    this.#takeCtrlCAfterLine(); // dropped, as one typed while the command runs
    if (!this.interactive || this.#closed) return command();
    this.#holdKeys();
    const lendKeys: KeyLender = async (prompt) => {
      const keys = new PassThrough();
      // The prompt's library puts the terminal in raw mode and back; it stays raw for readline.
      Object.assign(keys, { isTTY: true, setRawMode: () => keys });
      this.#keysTo = keys;
      try {
        return await prompt(keys);
      } finally {
        this.#keysTo = "held";
        keys.destroy();
      }
    };
    return command(lendKeys);
  }

  close(): void {
    if (this.interactive) process.stdout.write("\x1b[?2004l");
    if (!this.#closed) this.#rl.close();
    // Let go of the terminal so the process can exit.
    process.stdin.off("data", this.#readKeys);
    process.stdin.pause();
  }
}

/** The keys readline reads, with where a bracketed paste stands at the end of those written so far. */
type PasteAwareInput = Transform & {
  /** Inside a paste, the start of its end marker the last read ended with ("" if none); undefined outside one. */
  readonly pasteCarry: string | undefined;
};

/**
 * The keys as readline should see them: a bracketed paste (the terminal wraps it in ESC[200~ …
 * ESC[201~) becomes one line, its newlines replaced by a placeholder, so pasting a block
 * does not send each of its lines as a message.
 */
function pasteAwareInput(): PasteAwareInput {
  let pasting = false;
  // A long paste reaches us in several reads, cut anywhere: a character's bytes are decoded
  // once all have come, and the start of an end marker waits for its rest (read as text, it
  // left the chat pasting for good: Enter only added a line).
  const decoder = new StringDecoder("utf8");
  let markerStart = "";
  const transform = new Transform({
    transform(chunk: Buffer, _encoding: string, done: TransformCallback) {
      let text = markerStart + decoder.write(chunk);
      markerStart = "";
      let out = "";
      while (text.length > 0) {
        const marker = pasting ? pasteEnd : pasteStart;
        const at = text.indexOf(marker);
        let part = at < 0 ? text : text.slice(0, at);
        if (at < 0 && pasting) {
          markerStart = endingMarkerStart(part, marker);
          part = part.slice(0, part.length - markerStart.length);
        }
        out += pasting ? pastedText(part) : part;
        if (at < 0) break;
        pasting = !pasting;
        text = text.slice(at + marker.length);
      }
      done(null, out);
    },
  });
  // readline drives the terminal through its input: forward what it needs to the real stdin.
  Object.assign(transform, { isTTY: true, setRawMode: (mode: boolean) => process.stdin.setRawMode(mode) });
  return Object.defineProperty(transform as PasteAwareInput, "pasteCarry", {
    get: () => (pasting ? markerStart : undefined),
  });
}

/**
 * Pasted text as readline should take it: its newlines as the placeholder, and without the other
 * control characters (tab aside), as xterm leaves them out of a paste: readline would run them as
 * keys, so a pasted Ctrl-D left the chat and a Ctrl-A or an arrow key's escape moved the rest of the
 * paste to another place in the line.
 */
const pastedText = (text: string) =>
  text.replace(/\r\n|\r|\n/g, pastedNewline).replace(/[\x00-\x08\x0b-\x1f\x7f]/g, "");

/**
 * Where the first line in `keys` ends (their length where none does): after its Enter (a CR LF
 * as one), and the Ctrl-Cs typed right after it, which stop what that line starts (see
 * #ctrlCAfterLine). A line break inside a bracketed paste ends no line (`pasting`: the keys start inside one).
 */
function firstLineEnd(keys: Buffer, pasting = false): number {
  const paste = { start: Buffer.from(pasteStart), end: Buffer.from(pasteEnd) };
  for (let at = 0; at < keys.length; at++) {
    const marker = pasting ? paste.end : paste.start;
    if (keys[at] === marker[0] && keys.subarray(at, at + marker.length).equals(marker)) {
      pasting = !pasting;
      at += marker.length - 1;
    } else if (!pasting && lineEnds.includes(keys[at]!)) {
      let end = at + 1;
      if (keys[at] === 0x0d && keys[end] === 0x0a) end++;
      while (keys[end] === ctrlC) end++;
      return end;
    }
  }
  return keys.length;
}

/** The end of `text` that starts `marker` (and may be finished by the next read), or "". */
function endingMarkerStart(text: string, marker: string): string {
  for (let length = Math.min(marker.length - 1, text.length); length > 0; length--)
    if (text.endsWith(marker.slice(0, length))) return text.slice(-length);
  return "";
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
 * A line typed added to the history on disk as it is now: another chat's lines typed since this
 * one started are kept (a whole history kept in memory would write over them).
 */
function saveHistory(file: string, typed: string): void {
  let saved: string[] = [];
  try {
    saved = readHistory(file);
  } catch {
    // unreadable: this line starts it anew
  }
  // As readline's removeHistoryDuplicates: a line typed again moves to the front.
  const newestFirst = [...new Set([typed, ...saved])];
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
    // History is a convenience: a read-only or full disk must not break the chat.
    rmSync(temporary, { force: true });
  }
}
