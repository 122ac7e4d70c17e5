// Embeddings: OpenAI's POST /v1/embeddings, Ollama's POST /api/embed and the older
// POST /api/embeddings. The model is held for the request; the vectors come from the engine,
// or a remote model's from its provider's /embeddings.
import { Hono } from "hono";
import { base64Vector, parseOllamaEmbed, parseOpenAIEmbeddings, type EmbeddingsRequest } from "../../api/embeddings";
import { nanos } from "../../api/ollama";
import { readJson } from "../../api/validate";
import { embed, type Embeddings } from "../../engine/embed";
import { requestDeadline, requestedModel } from "../generation";
import type { LoadedEntry, Lease } from "../model-registry";
import { QueueFullError, UnsupportedError } from "../../errors";
import { remoteModel, type RemoteEmbeddings, type RemoteModel } from "../../providers";
import { remoteName } from "./ollama";
import type { ServerState } from "../state";

export function embeddingsRoutes(s: ServerState): Hono {
  const r = new Hono();

  r.post("/v1/embeddings", async (c) => {
    const body = (await readJson(c.req)) as Record<string, unknown>;
    const req = parseOpenAIEmbeddings(body);
    const model = requestedModel(s.config, req.model);
    const remote = remoteModel(model);
    // The provider's answer as it is (base64 where asked), under the name the client used.
    if (remote) return c.json({ ...(await remoteEmbeddings(s, remote, body, c.req.raw.signal)), model });
    const { result } = await embedWith(s, model, req, c.req.raw.signal);
    return c.json({
      object: "list",
      data: result.vectors.map((v, index) => ({
        object: "embedding",
        index,
        embedding: req.base64 ? base64Vector(v) : v,
      })),
      model,
      usage: { prompt_tokens: result.promptTokens, total_tokens: result.promptTokens },
    });
  });

  r.post("/api/embed", async (c) => {
    const started = performance.now();
    const req = parseOllamaEmbed(await readJson(c.req), false);
    const { result, loadMs } = await ollamaEmbed(s, req, c.req.raw.signal);
    return c.json({
      model: req.model,
      embeddings: result.vectors,
      total_duration: nanos(performance.now() - started),
      load_duration: nanos(loadMs),
      prompt_eval_count: result.promptTokens,
    });
  });

  r.post("/api/embeddings", async (c) => {
    const req = parseOllamaEmbed(await readJson(c.req), true);
    const { result } = await ollamaEmbed(s, req, c.req.raw.signal);
    // An empty prompt loads the model and embeds nothing, as in Ollama.
    return c.json({ embedding: result.vectors[0] ?? [] });
  });
  return r;
}

/**
 * An Ollama request's vectors: a remote model's from its provider, as an OpenAI request (its
 * provider's rule for an input over the context holds; nothing to load ahead), else embedWith's.
 */
async function ollamaEmbed(
  s: ServerState,
  req: EmbeddingsRequest & { model: string },
  signal: AbortSignal,
): Promise<{ result: Embeddings; loadMs: number }> {
  const name = remoteName(req.model);
  if (name === undefined) return embedWith(s, req.model, req, signal);
  if (req.context !== undefined)
    throw new UnsupportedError(
      `model '${req.model}' is remote: its context is the provider's, which options.num_ctx cannot bound`,
      "options.num_ctx",
    );
  if (req.inputs.length === 0) return { result: { vectors: [], promptTokens: 0 }, loadMs: 0 };
  const dimensions = req.dimensions === undefined ? {} : { dimensions: req.dimensions };
  const answer = await remoteEmbeddings(
    s,
    remoteModel(name)!,
    { input: req.inputs, ...dimensions, encoding_format: "float" },
    signal,
  );
  const vectors = answer.data.map((d) => d.embedding as number[]);
  return { result: { vectors, promptTokens: answer.usage?.prompt_tokens ?? 0 }, loadMs: 0 };
}

/** A remote model's embeddings from its provider, bounded as embedWith's are (the client, the request timeout, the shutdown). */
async function remoteEmbeddings(
  s: ServerState,
  remote: RemoteModel,
  body: Record<string, unknown>,
  signal: AbortSignal,
): Promise<RemoteEmbeddings> {
  const deadline = requestDeadline({ clientSignal: signal, timeoutMs: s.config.requestTimeoutMs }, s.shutdown.signal);
  try {
    return await remote.embeddings(body, deadline.controller.signal);
  } catch (error) {
    throw deadline.cutShort()?.error ?? error;
  } finally {
    deadline.release();
  }
}

/**
 * The vectors, while the model is held; the work stops once `signal` says the client went away,
 * or, as a generation's, once the request timeout passes (a 504) or the server stops (a 503).
 */
async function embedWith(
  s: ServerState,
  model: string,
  req: EmbeddingsRequest,
  signal: AbortSignal,
): Promise<{ result: Embeddings; loadMs: number }> {
  // The request's clock starts now: waiting for the model to load counts.
  const deadline = requestDeadline({ clientSignal: signal, timeoutMs: s.config.requestTimeoutMs }, s.shutdown.signal);
  let lease: Lease | undefined;
  let counted: LoadedEntry | undefined;
  try {
    lease = await s.models.acquire(model, req.keepAlive, deadline.controller.signal);
    const entry = lease.entry;
    if (entry.embeddings >= s.config.maxSequences)
      throw new QueueFullError(`the queue is full (${entry.embeddings} embedding requests under way)`);
    entry.embeddings++;
    counted = entry;
    const result = await embed(lease.entry.lm, req.inputs, {
      dimensions: req.dimensions,
      truncate: req.truncate,
      context: req.context,
      truncatePromptTokens: req.truncatePromptTokens,
      param: req.param,
      signal: deadline.controller.signal,
      adapter: lease.adapter,
      // A long input holds up the model's streams no longer than a prefill would (--prefill-chunk, or the tuner's).
      chunk: lease.entry.scheduler.limits.prefillChunk,
    });
    // Prompt tokens processed, as a generation's are (vLLM counts a pooling request's alike).
    s.metrics.promptTokens.inc({}, result.promptTokens);
    return { result, loadMs: lease.loadMs };
  } catch (error) {
    throw deadline.cutShort()?.error ?? error;
  } finally {
    if (counted) counted.embeddings--;
    deadline.release();
    lease?.release();
  }
}
