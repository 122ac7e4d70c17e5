// Answering with one generation, for both API families: whole (its events collected) or
// streamed (a body whose writes stop the generation once the client is gone, or has stopped
// reading: sendWithin). Both end the same way: a cancelled generation is either cut short by the
// server (past the request timeout, a 504, or still running when a stopping server's grace ended,
// a 503; in a stream, a last error message) or a client that went away (nothing more to say),
// and the outcome reaches /metrics exactly once.
import type { GenerationEvent, TokenLogprob } from "../engine/scheduler";
import type { ThinkingBlock } from "../engine/tools";
import { toApiError, type ApiError } from "./errors";
import type { Generation } from "./generation";
import type { ServerState } from "./state";

type TextEvent = Extract<GenerationEvent, { type: "text" }>;
type DoneEvent = Extract<GenerationEvent, { type: "done" }>;

export interface Collected {
  text: string;
  /** A thinking model's reasoning, apart from its answer ("" when none). */
  reasoning: string;
  /** A remote provider's closed thinking blocks, signed or redacted (an Anthropic provider's). */
  thinkingBlocks: ThinkingBlock[];
  tokens: TokenLogprob[];
  /** Alternatives per token, when they were asked for. */
  top: TokenLogprob[][];
  done: DoneEvent;
}

/** The whole generation; undefined when the client went away. Throws why when the server cut it short. */
export async function collectGeneration(gen: Generation): Promise<Collected | undefined> {
  let text = "";
  let reasoning = "";
  const thinkingBlocks: ThinkingBlock[] = [];
  const tokens: TokenLogprob[] = [];
  const top: TokenLogprob[][] = [];
  let outcome = "error";
  let done: DoneEvent | undefined;
  try {
    for await (const event of gen.events) {
      if (event.type === "text") {
        text += event.text;
        reasoning += event.reasoning ?? "";
        if (event.thinkingBlock) thinkingBlocks.push(event.thinkingBlock);
        tokens.push(...event.tokens);
        if (event.top) top.push(...event.top);
      } else if (event.type === "error") throw event.error;
      else done = event;
    }
    if (!done) throw new Error("the engine ended without a result");
    if (done.finishReason === "cancelled") {
      const cut = gen.cutShort();
      outcome = cut?.outcome ?? "cancelled";
      if (cut) throw cut.error;
      return undefined;
    }
    outcome = done.finishReason;
    return { text, reasoning, thinkingBlocks, tokens, top, done };
  } finally {
    gen.finish(outcome, done?.usage);
  }
}

export type Send = (bytes: Uint8Array) => void;

/**
 * Bytes of a streamed answer that may wait in the server for a client that does not read them
 * (ServerConfig.unreadStreamBytes). The sockets' own buffers hold a few megabytes more; past both,
 * a client has stopped reading (a process stalled, a reader paused for good, one that reads a
 * byte a second), and the rest of its answer would otherwise pile up in memory, its sequence
 * holding its batch slot, until its generation ended (the request timeout, ten minutes by default).
 */
export const DEFAULT_UNREAD_STREAM_BYTES = 4 * 1024 * 1024;

/**
 * What a streamed answer's body writes with: `bytes` queued for its client, who may leave at
 * most `limit` of them unread (make the stream with `unreadLimit(limit)`). Past that the client is
 * cut off as one gone: `gone` is called (its generations stop) and the connection is closed.
 */
export function sendWithin(controller: ReadableStreamDefaultController<Uint8Array>, gone: () => void): Send {
  return (bytes) => {
    try {
      controller.enqueue(bytes);
    } catch {
      gone(); // the stream is closed: the client went away, or was cut off
      return;
    }
    if (controller.desiredSize! >= 0) return;
    gone();
    // Failing the body closes the connection, which frees what it held. Without a reason: Bun
    // writes a body's error to stderr, and a client that stopped reading is no server error.
    controller.error();
  };
}

/** The queue of a streamed answer's body, in bytes, up to what its client may leave unread. */
export const unreadLimit = (limit: number) => new ByteLengthQueuingStrategy({ highWaterMark: limit });

const encoder = new TextEncoder();

/** A server-sent event named by its data's `type` (as Anthropic's and OpenAI Responses' streams are). */
export const namedEvent = (data: { type: string; [field: string]: unknown }) =>
  encoder.encode(`event: ${data.type}\ndata: ${JSON.stringify(data)}\n\n`);

export const eventStreamHeaders = {
  "Content-Type": "text/event-stream",
  "Cache-Control": "no-cache",
  "X-Accel-Buffering": "no",
};

/** What one API family writes into a streamed answer. */
export interface StreamWriter {
  /** Before any text (e.g. OpenAI's role chunk). */
  start?(send: Send): void;
  /** Whether start waits until the engine admitted the generation (what it writes tells the prompt's cached share). */
  startAdmitted?: boolean;
  text(event: TextEvent, send: Send): void;
  /** The generation finished (it was not cancelled). */
  done(event: DoneEvent, send: Send): void;
  /** The last message when the answer fails part way (a timeout included). */
  error(error: ApiError): Uint8Array;
  /** After the last event, when nothing failed (e.g. OpenAI's "data: [DONE]"). */
  end?(send: Send): void;
}

export function generationStream(
  gen: Generation,
  writer: StreamWriter,
  s: Pick<ServerState, "config" | "logError">,
): ReadableStream<Uint8Array> {
  return new ReadableStream<Uint8Array>(
    {
      async start(controller) {
        let outcome = "error";
        let done: DoneEvent | undefined;
        const send = sendWithin(controller, gen.abort);
        try {
          // Read by hand, as start may wait for the first event: a generation may end before its
          // prefill begins. Left early, it needs no return(): finish ends what it holds.
          const events = gen.events[Symbol.asyncIterator]();
          const first = events.next();
          if (writer.startAdmitted) await Promise.race([gen.admitted, first]);
          writer.start?.(send);
          for (let read = await first; !read.done; read = await events.next()) {
            const event = read.value;
            if (event.type === "text") writer.text(event, send);
            else if (event.type === "error") throw event.error;
            else {
              done = event;
              if (event.finishReason === "cancelled") {
                const cut = gen.cutShort();
                outcome = cut?.outcome ?? "cancelled";
                if (cut) send(writer.error(toApiError(cut.error)));
                break;
              }
              outcome = event.finishReason;
              writer.done(event, send);
            }
          }
          writer.end?.(send);
        } catch (error) {
          send(writer.error(toApiError(error, s.logError)));
        } finally {
          gen.finish(outcome, done?.usage);
          try {
            controller.close();
          } catch {
            // already closed by a cancel, or failed: its client was cut off
          }
        }
      },
      cancel() {
        gen.abort();
      },
    },
    unreadLimit(s.config.unreadStreamBytes),
  );
}

/**
 * How a response says the token budget closed a structured answer early to keep it valid
 * (finish reason "length" all the same): a `closed_early: true` field where the finish reason
 * is, and on whole (non-streamed) responses this header too.
 */
export const CLOSED_EARLY_HEADER = "X-Mlx-Closed-Early";
export const closedEarly = (gen: Generation) => (gen.closedEarly() ? { closed_early: true } : {});
export const closedEarlyHeaders = (gen: Generation | Generation[]): Record<string, string> =>
  [gen].flat().some((g) => g.closedEarly()) ? { [CLOSED_EARLY_HEADER]: "true" } : {};
