// What `mlx ps` and `mlx stop` share: they ask a running `mlx serve` (Ollama's routes), as
// `ollama ps` and `ollama stop` ask theirs. Where it is ($MLX_HOST, which `mlx serve` also
// listens on, as OLLAMA_HOST is for Ollama), its key, and one request with its failures in one line.
import type { ArgsDef } from "citty";
import { keyHint, serverBase, shownBase } from "../bench/server";
import { errorBodyMessage } from "../providers/types";

export const DEFAULT_HOST = "127.0.0.1";
export const DEFAULT_PORT = 11435;
const DEFAULT_SERVER = `http://${DEFAULT_HOST}:${DEFAULT_PORT}`;

/** Where a server listens, and the base URL its clients reach it at. */
export interface ServerAddress {
  /** As `--host` takes it: a name, an IPv4 address, or an IPv6 one in brackets. */
  host: string;
  port: number;
  url: string;
}

/**
 * $MLX_HOST in the forms OLLAMA_HOST takes: host, host:port, [::1]:port, http(s)://host:port
 * (a scheme's own port where it gives none; 11435 without a scheme), undefined when unset or
 * empty; anything else an Error of one line.
 */
export function serverAddressFromEnv(value = process.env.MLX_HOST): ServerAddress | undefined {
  const given = value?.trim();
  if (!given) return undefined;
  const bad = (why: string) =>
    new Error(`MLX_HOST '${value}' must be host, host:port or http://host:port, as OLLAMA_HOST (${why})`);
  const scheme = /^([a-z][a-z0-9+.-]*):\/\//i.exec(given)?.[1]?.toLowerCase();
  if (scheme !== undefined && scheme !== "http" && scheme !== "https") throw bad(`a scheme of '${scheme}'`);
  const rest = scheme === undefined ? given : given.slice(scheme.length + 3);
  // A path is kept, for a server a reverse proxy serves under one; a query or fragment is no base.
  const [, authority = "", path = ""] = /^([^/?#]*)([^?#]*)$/.exec(rest) ?? [];
  if (/[?#]/.test(rest)) throw bad("a query or fragment");
  // A bare IPv6 address (::1) is a host, not a host and port.
  const bareIPv6 = scheme === undefined && /^[0-9a-f]*:[0-9a-f]*:[0-9a-f:.]*$/i.test(authority);
  const parts = bareIPv6
    ? [authority, `[${authority}]`]
    : /^(\[[0-9a-f:.]+\]|[^:[\]@\s]+)(?::(\d*))?$/i.exec(authority);
  if (authority.startsWith(":"))
    throw bad("no host before the port: 127.0.0.1:PORT, or 0.0.0.0:PORT for every interface");
  if (!parts) throw bad("no host, or not a host and port");
  const [, host, portText] = parts as [string, string, string?];
  const defaultPort = scheme === "https" ? 443 : scheme === "http" ? 80 : DEFAULT_PORT;
  const port = portText ? Number(portText) : defaultPort;
  if (port > 65535) throw bad("a port above 65535");
  return { host, port, url: `${scheme ?? "http"}://${host}:${port}${path.replace(/\/+$/, "")}` };
}

/** The server a client command asks: its --url, else $MLX_HOST, else this machine's default. */
export const serverUrl = (args: { url?: string }): string => args.url ?? serverAddressFromEnv()?.url ?? DEFAULT_SERVER;

export const serverArgs = {
  url: { type: "string", description: `The mlx serve to ask (default: $MLX_HOST, else ${DEFAULT_SERVER})` },
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
  const base = serverBase(serverUrl(args));
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
    throw new Error(
      `cannot reach mlx serve at ${shown}: ${reason} (start one with \`mlx serve\`, or give --url or MLX_HOST)`,
    );
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
