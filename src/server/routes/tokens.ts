// llama.cpp-style utilities: POST /tokenize (ids, or ids with their text pieces; or in vLLM's
// shape), POST /detokenize, POST /apply-template (the prompt text the chat template makes of messages).
import { Hono, type Context } from "hono";
import { parseApplyTemplate, parseDetokenize, parseTokenize, type TokenizeRequest } from "../../api/tokens";
import { readJson } from "../../api/validate";
import { InvalidParameterError } from "../../errors";
import { runStepsAsync, type Steps } from "../../event-loop";
import { promptTokenIds, renderChat } from "../../engine/request";
import type { LoadedModel } from "../../models/load";
import { holdModel, httpRequestBounds, modelPrompt, requestedModel, servedContextLength } from "../generation";
import type { ServerState } from "../state";

export function tokenRoutes(s: ServerState): Hono {
  const r = new Hono();
  /** Runs `use` with the model the request names (or the default) held. */
  const withModel = async <T>(
    c: Context,
    name: string | undefined,
    use: (lm: LoadedModel) => T | Promise<T>,
  ): Promise<T> => {
    const lease = await holdModel(s, requestedModel(s.config, name), httpRequestBounds(s.config, c.req));
    try {
      return await use(lease.entry.lm);
    } finally {
      lease.release();
    }
  };

  r.post("/tokenize", async (c) => {
    const req = parseTokenize(await readJson(c.req));
    if (req.shape !== "llama.cpp") return c.json(await vllmTokenize(c, req));
    // In pieces, the event loop served between them: a text of megabytes takes seconds, and
    // its million tokens (with their pieces) a second more to write out.
    const body = await withModel(c, req.model, (lm) =>
      runStepsAsync(
        tokensJson(lm.tokenizer.encodeSteps(req.content, { addSpecialTokens: req.addSpecial }), (id) =>
          req.withPieces ? { id, piece: piece(lm.tokenizer.pieceBytes(id)) } : id,
        ),
      ),
    );
    return c.body(body, 200, { "Content-Type": "application/json" });
  });

  /** vLLM's /tokenize: the tokens, their count, the context they go into, and their strings where asked. */
  const vllmTokenize = (c: Context, req: Exclude<TokenizeRequest, { shape: "llama.cpp" }>) => {
    const model = requestedModel(s.config, req.model);
    return withModel(c, model, async (lm) => {
      const tokens =
        req.shape === "vllm"
          ? await runStepsAsync(lm.tokenizer.encodeSteps(req.text, { addSpecialTokens: req.addSpecial }))
          : await promptTokenIds(
              lm,
              req.chat.prompts[0]!,
              req.chat.tools,
              req.chat.thinking,
              false,
              modelPrompt(model),
            );
      return {
        count: tokens.length,
        max_model_len: servedContextLength(model, lm),
        tokens,
        token_strs: req.tokenStrings ? tokens.map((id) => lm.tokenizer.idToToken(id) ?? "") : null,
      };
    });
  };

  r.post("/detokenize", async (c) => {
    const req = parseDetokenize(await readJson(c.req));
    const content = await withModel(c, req.model, (lm) => {
      const vocab = lm.config.vocabSize;
      const bad = req.tokens.findIndex((id) => id >= vocab);
      if (bad >= 0)
        throw new InvalidParameterError(
          `token id ${req.tokens[bad]} is outside the model's vocabulary (${vocab})`,
          `tokens.${bad}`,
        );
      // In pieces, the event loop served between them, as /tokenize.
      return runStepsAsync(lm.tokenizer.decodeSteps(req.tokens));
    });
    // llama.cpp's name for the text, and vLLM's.
    return c.json({ content, prompt: content });
  });

  r.post("/apply-template", async (c) => {
    const req = parseApplyTemplate(await readJson(c.req));
    // As a generation renders them: with the turns the model's alias puts first.
    const model = requestedModel(s.config, req.model);
    const prompt = await withModel(c, model, (lm) =>
      renderChat(lm, req.messages, req.tools, req.thinking, modelPrompt(model)),
    );
    return c.json({ prompt });
  });
  return r;
}

/** Tokens written out between two pauses of tokensJson. */
const TOKENS_PER_PIECE = 64 * 1024;

/** `{"tokens": [...]}` of the ids `encoding` gives, each as `shown`, written a piece at a time. */
function* tokensJson(encoding: Steps<number[]>, shown: (id: number) => unknown): Steps<string> {
  const ids = yield* encoding;
  const parts: string[] = [];
  for (let start = 0; start < ids.length; start += TOKENS_PER_PIECE) {
    parts.push(JSON.stringify(ids.slice(start, start + TOKENS_PER_PIECE).map(shown)).slice(1, -1));
    yield;
  }
  return `{"tokens":[${parts.join(",")}]}`;
}

const strictUtf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** A token's piece as llama.cpp's /tokenize shows it: its text, or its bytes when they are part of a character. */
function piece(bytes: Uint8Array): string | number[] {
  try {
    return strictUtf8.decode(bytes);
  } catch {
    return [...bytes];
  }
}
