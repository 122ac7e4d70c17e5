// Streaming an answer that may hold tool calls: prose goes out as it comes, but from the
// moment a call may be starting the text is held, so a client never sees half a call as
// prose. At the end the held text is read into calls (or released as prose if it is none), so
// that the prose streamed is the content of the answer read whole.
//
// The calls themselves can go out as they are written (as OpenAI's, Anthropic's and vLLM's
// streams send them): once a call's head is whole its id and function are announced, then its
// arguments in pieces, re-written as the APIs send arguments (canonical JSON), so the pieces add
// up to the arguments of the call read whole. The answer read whole at the end still has the
// last word: each announced call is then finished, or, where it did not read (cut off by the
// token budget or a stop string, or not JSON after all), ended as it stands.
import { isDeepStrictEqual } from "node:util";
import { parseExactJson } from "../../exact-json";
import { partialMarker } from "../stop";
import { CanonicalJson } from "./canonical-json";
import type { CallHead, ParsedAnswer, ToolCallParser } from "./formats";
import type { ToolCall } from "./types";

/** A streamed call's progress: announced (its index among the answer's streamed calls), more arguments, or ended. */
export type ToolCallDelta =
  | { type: "start"; index: number; id: string; name: string }
  | { type: "arguments"; index: number; delta: string }
  /**
   * The call is over: `call` as it was read (its id the one announced), `arguments` the JSON
   * text its pieces add up to; without `call` where it did not read, `arguments` as streamed.
   */
  | { type: "end"; index: number; call?: ToolCall; arguments: string };

/** A call announced while it is written. */
interface OpenCall {
  head: CallHead;
  /** The canonical JSON of its arguments sent so far. */
  sent: string;
  /** How much of the held text its arguments were read from. */
  read: number;
  /** For JSON arguments: their re-writing as they come. */
  canonical?: CanonicalJson;
  /** Whether its arguments no longer go out (they stopped being JSON): the end decides. */
  stalled: boolean;
}

export class ToolCallStream {
  private held = "";
  /** The prose released so far. */
  private shown = "";
  private inCall = false;
  /** For formats whose calls open the answer: whether the answer is known to be prose. */
  private prose = false;

  /** The calls announced, in order. */
  private readonly announced: OpenCall[] = [];
  /** Where in the held text the next call's head is looked for (-1 while a call's arguments go on). */
  private lookFrom = 0;
  /** Once the answer ended: the deltas that finish its calls, not yet taken. */
  private ending: ToolCallDelta[] | undefined;

  constructor(private readonly format: ToolCallParser) {}

  /**
   * The calls' progress since the last look: each call whose head is now whole announced, the
   * arguments written since. Empty for a format that cannot tell a call's head before its end.
   * After `end`: the announced calls' last pieces and ends, then each call not announced, whole.
   */
  callDeltas(): ToolCallDelta[] {
    if (this.ending) return this.ending.splice(0);
    const deltas: ToolCallDelta[] = [];
    if (!this.inCall || !this.format.callHead) return deltas;
    for (;;) {
      const open = this.announced.at(-1);
      if (open && !open.stalled) {
        const more = this.moreArguments(open);
        if (more) deltas.push({ type: "arguments", index: this.announced.length - 1, delta: more });
        if (open.stalled) return deltas;
        if (this.lookFrom < 0) return deltas; // its end is not written yet
      } else if (open) return deltas;
      const head = this.format.callHead(this.held, this.lookFrom);
      if (!head) return deltas;
      this.announced.push({
        head,
        sent: "",
        read: head.argumentsAt,
        canonical: head.argumentsSoFar ? undefined : new CanonicalJson(),
        stalled: false,
      });
      this.lookFrom = -1;
      deltas.push({ type: "start", index: this.announced.length - 1, id: head.id, name: head.name });
    }
  }

  /** The arguments of `call` written since it was last looked at; where they end, the next head is looked for past them. */
  private moreArguments(call: OpenCall): string {
    let json: string;
    let end: number | undefined;
    const { canonical } = call;
    if (canonical) {
      json = call.sent + canonical.feed(this.held.slice(call.read));
      if (canonical.done) end = call.head.argumentsAt + canonical.end;
      else if (!canonical.open) call.stalled = true;
    } else {
      // A parameter (or the call) is whole once its closing tag is: not before another ">".
      if (!this.held.includes(">", call.read)) return "";
      ({ json, end } = call.head.argumentsSoFar!(this.held));
    }
    call.read = this.held.length;
    if (!json.startsWith(call.sent)) {
      call.stalled = true;
      return "";
    }
    const more = json.slice(call.sent.length);
    call.sent = json;
    if (end !== undefined) this.lookFrom = end;
    return more;
  }

  /** Takes the next piece of the answer; returns the prose that can be shown now. */
  push(text: string): string {
    this.held += text;
    if (this.inCall) return "";
    const prose = this.format.anywhere ? this.pushAnywhere() : this.pushAtStart();
    this.shown += prose;
    return prose;
  }

  /**
   * The answer is complete: the prose not yet shown, and the calls (those announced keep their
   * ids); `callDeltas` then gives what finishes the announced calls and streams the others.
   */
  end(): ParsedAnswer {
    const deltas = this.callDeltas();
    const answer = this.endAnswer();
    const finished = new Set<number>();
    const calls = answer.calls.map((call, index) => {
      const open = this.announced[index];
      if (!open || open.head.name !== call.name) return call;
      // Its pieces add up to its arguments: those re-written whole (the same object, where the
      // model wrote a key twice, say), or the call's own, of which they are the start.
      const rewritten = open.canonical?.done && isDeepStrictEqual(readJson(open.sent), call.arguments);
      const args = rewritten ? open.sent : JSON.stringify(call.arguments);
      if (!args.startsWith(open.sent)) return call;
      const read = { ...call, id: open.head.id };
      if (args.length > open.sent.length)
        deltas.push({ type: "arguments", index, delta: args.slice(open.sent.length) });
      deltas.push({ type: "end", index, call: read, arguments: args });
      finished.add(index);
      return read;
    });
    // An announced call that did not read ends as it stands (the client has its start).
    this.announced.forEach((open, index) => {
      if (!finished.has(index)) deltas.push({ type: "end", index, arguments: open.sent });
    });
    // The calls read but not announced (or announced otherwise) follow, whole.
    let index = this.announced.length;
    calls.forEach((call, i) => {
      if (finished.has(i)) return;
      const args = JSON.stringify(call.arguments);
      deltas.push(
        { type: "start", index, id: call.id, name: call.name },
        { type: "arguments", index, delta: args },
        { type: "end", index, call, arguments: args },
      );
      index++;
    });
    this.ending = deltas;
    return { ...answer, calls };
  }

  private endAnswer(): ParsedAnswer {
    const rest = this.held;
    this.held = "";
    if (!this.inCall) {
      // No call opened, but the held end may be a marker's start that the token budget cut off
      // (DeepSeek's <｜tool▁calls▁begin｜>): the content is what the answer read whole leaves.
      const whole = this.format.parse(this.shown + rest).content;
      return { content: whole.startsWith(this.shown) ? whole.slice(this.shown.length) : rest, calls: [] };
    }
    // Read whole, as an answer that is not streamed: its content goes on from the prose shown
    // (unless it drops whitespace that opened the answer, which was shown before any call).
    const answer = this.format.parse(this.shown + rest);
    const content = answer.content.startsWith(this.shown)
      ? answer.content.slice(this.shown.length)
      : this.format.parse(rest).content;
    return { content, calls: answer.calls };
  }

  private pushAnywhere(): string {
    for (const marker of this.format.markers) {
      const at = this.held.indexOf(marker);
      if (at >= 0) {
        this.inCall = true;
        return this.release(this.proseLength(at));
      }
    }
    // Hold back an ending that could grow into a marker, and whitespace a call may follow (the
    // content of an answer with calls does not end in whitespace).
    return this.release(this.proseLength(this.held.length - partialMarker(this.held, this.format.markers)));
  }

  /** How much of the first `n` held characters is prose to show now: all but trailing whitespace. */
  private proseLength(n: number): number {
    return this.held.slice(0, n).trimEnd().length;
  }

  private pushAtStart(): string {
    if (this.prose) return this.release(this.held.length);
    const start = this.held.trimStart();
    if (!start) return "";
    if (this.format.markers.some((m) => start.startsWith(m))) {
      this.inCall = true;
      return "";
    }
    if (this.format.markers.some((m) => m.startsWith(start))) return "";
    this.prose = true;
    return this.release(this.held.length);
  }

  /** Returns the first `n` held characters, keeping the rest. */
  private release(n: number): string {
    const out = this.held.slice(0, n);
    this.held = this.held.slice(n);
    return out;
  }
}

function readJson(text: string): unknown {
  try {
    return parseExactJson(text);
  } catch {
    return undefined;
  }
}
