// Streaming an answer that may hold tool calls: prose goes out as it comes, but from the
// moment a call may be starting the text is held, so a client never sees half a call as
// prose. At the end the held text is read into calls (or released as prose if it is none), so
// that the prose streamed is the content of the answer read whole.
import { partialMarker } from "../stop";
import type { ParsedAnswer, ToolCallParser } from "./formats";

export class ToolCallStream {
  private held = "";
  /** The prose released so far. */
  private shown = "";
  private inCall = false;
  /** For formats whose calls open the answer: whether the answer is known to be prose. */
  private prose = false;

  constructor(private readonly format: ToolCallParser) {}

  /** Takes the next piece of the answer; returns the prose that can be shown now. */
  push(text: string): string {
    this.held += text;
    if (this.inCall) return "";
    const prose = this.format.anywhere ? this.pushAnywhere() : this.pushAtStart();
    this.shown += prose;
    return prose;
  }

  /** The answer is complete: the prose not yet shown, and the calls. */
  end(): ParsedAnswer {
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
