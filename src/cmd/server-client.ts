// What `mlx ps` and `mlx stop` share: they ask a running `mlx serve` (Ollama's routes), as
// `ollama ps` and `ollama stop` ask theirs. Where it is, its key, and one request with its
// failures in one line.
import type { ArgsDef } from "citty";
import { keyHint, serverBase, shownBase } from "../bench/server";
import { errorBodyMessage } from "../providers/types";

export const DEFAULT_SERVER = "http://127.0.0.1:11435";

export const serverArgs = {
  url: { type: "string", description: `The mlx serve to ask (default: ${DEFAULT_SERVER})` },
  "api-key": {
    type: "string",
    description: "Its API key, when it requires one, sent as 'Authorization: Bearer <key>' (default: $MLX_API_KEY)",
  },
} as const satisfies ArgsDef;

/** How long a request may take: these routes answer at once, unless the server is stuck. */
const TIMEOUT_MS = 10_000;

/** A running server's answer to `path` (JSON), or an Error of one line saying what went wrong. */
export async function askServer(
  args: { url?: string; "api-key"?: string },
  path: string,
  body?: unknown,
): Promise<unknown> {
  const base = serverBase(args.url ?? DEFAULT_SERVER);
  // A user:password in --url (sent as Basic auth) is masked wherever the URL is shown.
  const shown = shownBase(base);
  const apiKey = args["api-key"] ?? process.env.MLX_API_KEY;
  let response: Response;
  try {
    response = await fetch(`${base}${path}`, {
      method: body === undefined ? "GET" : "POST",
      headers: { "content-type": "application/json", ...(apiKey ? { authorization: `Bearer ${apiKey}` } : {}) },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(TIMEOUT_MS),
    });
  } catch (error) {
    const reason =
      (error as Error).name === "TimeoutError" ? `no answer within ${TIMEOUT_MS / 1000} s` : "nothing answers";
    throw new Error(`cannot reach mlx serve at ${shown}: ${reason} (start one with \`mlx serve\`, or give --url)`);
  }
  let text: string;
  try {
    text = await response.text();
  } catch (error) {
    // Its headers came, then the body stalled or was cut: the bare "The operation timed out." named nothing.
    const reason =
      (error as Error).name === "TimeoutError"
        ? `the rest did not come within ${TIMEOUT_MS / 1000} s`
        : "the connection closed before its end";
    throw new Error(`${shown} answered ${path} in part: ${reason}`);
  }
  const json = parsedJson(text);
  // Another server (a web server on that port) answers with a page, whose first line ("<!DOCTYPE
  // HTML>") would be all the error said.
  if (json === undefined)
    throw new Error(
      `${shown} answered ${path} with ${response.ok ? "" : `HTTP ${response.status} and `}something other than JSON: is it mlx serve?${keyHint(response.status, apiKey)}`,
    );
  if (!response.ok)
    throw new Error(`${shown}: HTTP ${response.status}: ${errorBodyMessage(text)}${keyHint(response.status, apiKey)}`);
  return json;
}

function parsedJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}
