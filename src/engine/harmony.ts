// gpt-oss writes OpenAI's "harmony" format: after the prompt's `<|start|>assistant`, messages of
// the form `<|channel|>NAME[ to=RECIPIENT][ <|constrain|>TYPE]<|message|>BODY` each ended by
// <|end|> (another message follows, after `<|start|>assistant`), <|return|> (the answer is
// done) or <|call|> (a tool call is). The analysis channel is the reasoning, the final channel
// the answer, and a commentary message to `functions.NAME` a tool call (one without a recipient
// is a preamble the user sees). The HarmonySplitter reads that stream as the ReasoningSplitter
// reads <think>: reasoning apart, the answer as text, and each call passed on in the text as one
// canonical `<|channel|>commentary to=functions.NAME<|message|>ARGS<|call|>` that the harmony
// tool-call format (tools/formats.ts) reads.
import type { SplitText } from "./reasoning";
import { partialMarker } from "./stop";

export const HARMONY = {
  start: "<|start|>",
  channel: "<|channel|>",
  message: "<|message|>",
  constrain: "<|constrain|>",
  end: "<|end|>",
  return: "<|return|>",
  call: "<|call|>",
} as const;

/** Texts that end a message's body. */
const BODY_ENDS = [HARMONY.end, HARMONY.return, HARMONY.call];

/** Whether a chat template writes harmony (gpt-oss's). */
export function isHarmonyTemplate(chatTemplate: string | undefined): boolean {
  return (chatTemplate ?? "").includes(HARMONY.channel);
}

/** The reasoning tags as a thinking budget follows and closes them in harmony. */
export const harmonyReasoningTags = {
  open: `${HARMONY.channel}analysis${HARMONY.message}`,
  close: HARMONY.end,
  /** What a spent budget makes the model write: the end of the analysis, and the final answer's header. */
  forced: `${HARMONY.end}${HARMONY.start}assistant${HARMONY.channel}final${HARMONY.message}`,
};

/**
 * The same where the model may call a function: a spent budget ends the analysis and opens the
 * next message, whose channel the model picks (the final answer, or commentary to=functions.NAME),
 * since a forced final header would leave a call it meant to make written out as the answer.
 */
export const harmonyReasoningTagsBeforeCalls = {
  ...harmonyReasoningTags,
  forced: `${HARMONY.end}${HARMONY.start}assistant${HARMONY.channel}`,
};

/** A message's header (what comes between its <|start|> and <|message|>) as its channel and recipient. */
export function harmonyHeader(header: string): { channel: string; recipient?: string } {
  const channel = /<\|channel\|>\s*([A-Za-z_]+)/.exec(header)?.[1] ?? "";
  const recipient = /\bto=([^\s<]+)/.exec(header)?.[1];
  return { channel, recipient };
}

/** A canonical call message, as the splitter passes a call on (and the harmony format reads it). */
export const harmonyCall = (recipient: string, args: string) =>
  `${HARMONY.channel}commentary to=${recipient}${HARMONY.message}${args}${HARMONY.call}`;

type Body = "reasoning" | "text" | { call: string };

/** Longest header we wait for before taking the text for prose (a model that does not write harmony). */
const MAX_HEADER = 256;

/**
 * Streamed harmony text → reasoning and answer (the same interface as ReasoningSplitter). A
 * marker split across pieces is held back until it is whole; a call's body is held until it
 * ends, and goes out whole. Text that never becomes a harmony header (a model that does not
 * follow the format) is the answer's, as it is.
 */
export class HarmonySplitter {
  /** In a header (its text so far), or in a message's body (what it is). */
  #header: string | undefined = "";
  #body: Body | undefined;
  #callArgs = "";
  #pending = "";
  #plain = false;
  /** Whether some answer text went out (messages after it are set apart by a blank line). */
  #answered = false;
  #answerGap = false;

  /** `promptTail`: the prompt's end, which may leave the model inside a message (continue_final_message). */
  constructor(promptTail = "") {
    const start = promptTail.lastIndexOf(HARMONY.start);
    const last = start < 0 ? "" : promptTail.slice(start + HARMONY.start.length);
    const bodyAt = last.indexOf(HARMONY.message);
    if (bodyAt >= 0 && !BODY_ENDS.some((end) => last.includes(end, bodyAt))) {
      this.#open(last.slice(0, bodyAt));
      // What the prompt put in the message already is not the answer's.
      if (this.#body === "text") this.#answered = true;
    }
  }

  /** Whether the text so far ends inside the reasoning. */
  get inside(): boolean {
    return this.#body === "reasoning";
  }

  /** Whether the text so far ends in a message the user reads (the final answer, a preamble): not in a header or a call. */
  get answering(): boolean {
    return this.#body === "text";
  }

  push(piece: string): SplitText {
    let buffer = this.#pending + piece;
    this.#pending = "";
    const out: SplitText = { text: "", reasoning: "" };
    if (this.#plain) {
      out.text = buffer;
      return out;
    }
    while (buffer) {
      if (this.#header !== undefined) {
        const header = this.#header + buffer;
        const at = header.indexOf(HARMONY.message);
        if (at < 0) {
          this.#header = header;
          if (header.length > MAX_HEADER && !header.includes(HARMONY.channel)) return this.#goPlain(out);
          break;
        }
        this.#open(header.slice(0, at));
        buffer = header.slice(at + HARMONY.message.length);
        continue;
      }
      const ends = BODY_ENDS.map((end) => buffer.indexOf(end)).filter((at) => at >= 0);
      const endAt = ends.length > 0 ? Math.min(...ends) : -1;
      const cut = endAt >= 0 ? endAt : buffer.length - partialMarker(buffer, BODY_ENDS);
      this.#write(buffer.slice(0, cut), out);
      if (endAt < 0) {
        this.#pending = buffer.slice(cut);
        break;
      }
      this.#close(out);
      const end = BODY_ENDS.find((e) => buffer.startsWith(e, endAt))!;
      buffer = buffer.slice(endAt + end.length);
    }
    return out;
  }

  /** What was held back, at the end of the text: a call its end token ended, or a header that never opened a message. */
  flush(): SplitText {
    const out: SplitText = { text: "", reasoning: "" };
    if (this.#plain) return out;
    if (this.#header !== undefined) {
      const rest = this.#header;
      this.#header = "";
      // Text that never became a message is prose; a header cut off by the end is nothing.
      if (rest.trim() && !rest.includes(HARMONY.channel) && !rest.trimStart().startsWith("<|")) out.text = rest;
      return out;
    }
    // A body the end cut off (the end token, <|return|> or <|call|>, is never text): what was
    // held as the start of a marker is the body's own text (gpt-oss writes each marker as one token).
    this.#write(this.#pending, out);
    this.#pending = "";
    this.#close(out);
    return out;
  }

  #goPlain(out: SplitText): SplitText {
    this.#plain = true;
    out.text += this.#header!;
    this.#header = undefined;
    return out;
  }

  /** Opens the message whose header is `header`. */
  #open(header: string): void {
    const { channel, recipient } = harmonyHeader(header);
    this.#header = undefined;
    if (recipient?.startsWith("functions.")) this.#body = { call: recipient };
    else if (channel === "analysis") this.#body = "reasoning";
    // The final answer, a preamble on the commentary channel, or a message on no channel.
    else this.#body = "text";
    this.#answerGap = this.#body === "text" && this.#answered;
  }

  #write(text: string, out: SplitText): void {
    if (!text) return;
    const body = this.#body!;
    if (body === "reasoning") out.reasoning += text;
    else if (body === "text") {
      if (this.#answerGap) out.text += "\n\n";
      this.#answerGap = false;
      this.#answered = true;
      out.text += text;
    } else this.#callArgs += text;
  }

  #close(out: SplitText): void {
    const body = this.#body;
    if (body !== undefined && typeof body === "object") out.text += harmonyCall(body.call, this.#callArgs.trim());
    this.#callArgs = "";
    this.#body = undefined;
    this.#header = "";
  }
}
