// Where an answer that calls tools stands in its structural tag, and the shortest text that
// completes it validly: finish the call's opening ("<tool_call>\n{"name": "f", ...), its
// arguments (a JsonProgress on the function's parameter schema, or an XmlParametersProgress for
// Qwen's XML parameters), its closing, and the list around the calls where the family writes
// one. Outside a call in free text (calls not required) nothing is owed.
import { JsonProgress, SchemaShapes, UnsteerableSchemaError } from "./json-progress";
import { minXmlParameters, XmlParametersProgress } from "./xml-progress";

export interface CallShape {
  begin: string;
  end: string;
  shapes: SchemaShapes;
  schema: object;
  /** Whether the arguments are Qwen's XML parameters (read with the call's end), not a JSON object. */
  xml?: boolean;
}

export interface CallsLayout {
  calls: CallShape[];
  separator: string;
  list?: { begin: string; end: string };
  /** Free text until this text opens a call (calls not required), else calls only. */
  trigger?: string;
}

type State =
  | { t: "free"; tail: string }
  | { t: "list"; typed: string }
  | { t: "begin"; typed: string }
  | { t: "args"; call: CallShape; args: JsonProgress | XmlParametersProgress }
  | { t: "end"; call: CallShape; typed: string }
  | { t: "after" }
  | { t: "separator"; typed: string }
  | { t: "listEnd"; typed: string }
  | { t: "done" };

export class CallsProgress {
  private state: State;
  /** The text left the layout as read here: the completion is unknown. */
  private lost = false;

  constructor(private readonly layout: CallsLayout) {
    this.state = layout.trigger !== undefined ? { t: "free", tail: "" } : this.opening("");
  }

  /** The state once `typed` (the trigger, or nothing) opened the calls: the trigger may be the whole list opening. */
  private opening(typed: string): State {
    const list = this.layout.list;
    if (!list) return { t: "begin", typed };
    return typed === list.begin ? { t: "begin", typed: "" } : { t: "list", typed };
  }

  clone(): CallsProgress {
    const copy = new CallsProgress(this.layout);
    copy.lost = this.lost;
    copy.state = this.state.t === "args" ? { ...this.state, args: this.state.args.clone() } : { ...this.state };
    return copy;
  }

  inFreeString(): boolean {
    return this.state.t === "args" && this.state.args.inFreeString();
  }

  inPatternString(): boolean {
    return this.state.t === "args" && this.state.args.inPatternString();
  }

  feed(text: string): void {
    for (let i = 0; i < text.length && !this.lost; ) {
      const s = this.state;
      if (s.t === "args") {
        i += s.args.feed(text.slice(i));
        if (s.args.lost) this.lost = true;
        // A call with no closing (Mistral's v11+ calls), or whose XML parameters read the
        // closing with them, is over with its arguments.
        else if (s.args.done)
          this.state = s.call.end && !s.call.xml ? { t: "end", call: s.call, typed: "" } : { t: "after" };
        continue;
      }
      try {
        this.char(text[i]!);
      } catch (error) {
        if (!(error instanceof UnsteerableSchemaError)) throw error;
        this.lost = true;
      }
      i++;
    }
  }

  private char(c: string): void {
    const s = this.state;
    const { calls, list, separator, trigger } = this.layout;
    switch (s.t) {
      case "free": {
        const tail = (s.tail + c).slice(-trigger!.length);
        this.state = tail === trigger ? this.opening(trigger) : { t: "free", tail };
        return;
      }
      case "list":
        s.typed += c;
        if (s.typed === list!.begin) this.state = { t: "begin", typed: "" };
        return;
      case "begin": {
        s.typed += c;
        const call = calls.find((f) => f.begin === s.typed);
        if (call) this.state = { t: "args", call, args: this.arguments(call) };
        return;
      }
      case "end":
        s.typed += c;
        if (s.typed === s.call.end) this.state = { t: "after" };
        return;
      case "after":
        if (list?.end.startsWith(c)) this.state = { t: "listEnd", typed: "" };
        else if (separator.startsWith(c) && (list || trigger === undefined)) this.state = { t: "separator", typed: "" };
        // Free text again after a call, unless a list it is in must be closed.
        else if (trigger !== undefined && !list?.end) this.state = { t: "free", tail: "" };
        else throw new UnsteerableSchemaError("text after a call that the layout does not allow");
        return this.char(c);
      case "separator":
        s.typed += c;
        if (s.typed === separator) this.state = { t: "begin", typed: "" };
        return;
      case "listEnd":
        s.typed += c;
        if (s.typed === list!.end) this.state = trigger !== undefined ? { t: "free", tail: "" } : { t: "done" };
        return;
      case "done":
        throw new UnsteerableSchemaError("text after the calls");
    }
  }

  completion(): string {
    if (this.lost) throw new UnsteerableSchemaError("the text left the calls' layout as read here");
    const s = this.state;
    const closeList = this.layout.list?.end ?? "";
    switch (s.t) {
      case "free":
      case "done":
        return "";
      case "after":
        return closeList;
      case "list":
        return this.layout.list!.begin.slice(s.typed.length) + this.cheapestCall("") + closeList;
      case "begin":
        return this.cheapestCall(s.typed) + closeList;
      case "args":
        return s.args.completion() + (s.call.xml ? "" : s.call.end) + closeList;
      case "end":
        return s.call.end.slice(s.typed.length) + closeList;
      case "separator":
        return this.layout.separator.slice(s.typed.length) + this.cheapestCall("") + closeList;
      case "listEnd":
        return closeList.slice(s.typed.length);
    }
  }

  /** A reader of `call`'s arguments, from their first character. */
  private arguments(call: CallShape): JsonProgress | XmlParametersProgress {
    return call.xml
      ? new XmlParametersProgress(call.shapes, call.schema as Record<string, unknown>, call.end)
      : new JsonProgress(call.shapes, call.schema);
  }

  /** The shortest whole call whose opening starts with `typed`, from there on. */
  private cheapestCall(typed: string): string {
    let best: string | undefined;
    for (const call of this.layout.calls) {
      if (!call.begin.startsWith(typed)) continue;
      let text: string;
      try {
        const args = call.xml
          ? minXmlParameters(call.shapes, call.schema as Record<string, unknown>)
          : call.shapes.minText(call.schema);
        text = call.begin.slice(typed.length) + args + call.end;
      } catch (error) {
        if (error instanceof UnsteerableSchemaError) continue;
        throw error;
      }
      if (best === undefined || text.length < best.length) best = text;
    }
    if (best === undefined) throw new UnsteerableSchemaError("no call can be completed");
    return best;
  }
}
