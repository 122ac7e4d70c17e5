// llama.cpp-style utilities: POST /tokenize (ids, or ids with their text pieces), POST
// /detokenize, POST /apply-template (the prompt text the chat template makes of messages).
import { Hono, type Context } from "hono";
import { parseApplyTemplate, parseDetokenize, parseTokenize } from "../../api/tokens";
import { readJson } from "../../api/validate";
import { InvalidParameterError } from "../../errors";
import { renderChat } from "../../engine/request";
import type { LoadedModel } from "../../models/load";
import { holdModel, httpRequestBounds, requestedModel } from "../generation";
import type { ServerState } from "../state";

export function tokenRoutes(s: ServerState): Hono {
  const r = new Hono();
  /** Runs `use` with the model the request names (or the default) held. */
  const withModel = async <T>(c: Context, name: string | undefined, use: (lm: LoadedModel) => T): Promise<T> => {
    const lease = await holdModel(s, requestedModel(s.config, name), httpRequestBounds(s.config, c.req));
    try {
      return use(lease.entry.lm);
    } finally {
      lease.release();
    }
  };

  r.post("/tokenize", async (c) => {
    const req = parseTokenize(await readJson(c.req));
    const tokens = await withModel(c, req.model, (lm) => {
      const ids = lm.tokenizer.encode(req.content, { addSpecialTokens: req.addSpecial });
      return req.withPieces ? ids.map((id) => ({ id, piece: piece(lm.tokenizer.pieceBytes(id)) })) : ids;
    });
    return c.json({ tokens });
  });

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
      return lm.tokenizer.decode(req.tokens);
    });
    return c.json({ content });
  });

  r.post("/apply-template", async (c) => {
    const req = parseApplyTemplate(await readJson(c.req));
    const prompt = await withModel(c, req.model, (lm) => renderChat(lm, req.messages, req.tools));
    return c.json({ prompt });
  });
  return r;
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
