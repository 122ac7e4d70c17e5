// `mlx ps`: the models a running `mlx serve` holds in memory, as `ollama ps` lists them.
import { defineCommand } from "citty";
import { durationInWords, formatBytes, plainTable } from "../format";
import { fail } from "./log";
import { askServer, serverArgs, serverUrl } from "./server-client";
import { serverBase, shownBase } from "../bench/server";

/** A model as Ollama's /api/ps lists it (the fields this command reads). */
export interface RunningModel {
  name: string;
  size: number;
  /** Absent from older Ollama's /api/ps. */
  context_length?: number;
  expires_at: string;
}

export default defineCommand({
  meta: { name: "ps", description: "List the models a running mlx serve holds in memory" },
  args: {
    ...serverArgs,
    json: {
      type: "boolean",
      description: "One JSON array of /api/ps's entries (name, size, context_length, expires_at, ...)",
    },
  },
  async run({ args }) {
    try {
      const models = await runningModels(args);
      if (args.json) {
        process.stdout.write(`${JSON.stringify(models, null, 2)}\n`);
        return;
      }
      const rows = models.map((m) => [
        m.name,
        formatBytes(m.size),
        m.context_length === undefined ? "-" : String(m.context_length),
        until(m.expires_at),
      ]);
      process.stdout.write(plainTable(["NAME", "SIZE", "CONTEXT", "UNTIL"], rows));
    } catch (error) {
      fail(error);
    }
  },
});

/**
 * The models a running server holds (its /api/ps). Another server answering JSON on that port
 * (an API of its own) is said to be one, not a TypeError on what it sent.
 */
export async function runningModels(args: { url?: string; "api-key"?: string }): Promise<RunningModel[]> {
  const answer = await askServer(args, "/api/ps");
  const models = (answer as { models?: unknown } | null)?.models;
  // Entries that are not models (null, no name) are its own API too: mlx ps and stop read their names.
  const named = (m: unknown) => typeof (m as { name?: unknown } | null)?.name === "string";
  if (!Array.isArray(models) || !models.every(named))
    throw new Error(
      `${shownBase(serverBase(serverUrl(args)))} answered /api/ps with JSON that lists no models: is it mlx serve?`,
    );
  return models as RunningModel[];
}

/** When an idle model unloads, in words: Ollama's far-future date is a model kept for good. */
function until(iso: string): string {
  const seconds = (Date.parse(iso) - Date.now()) / 1000;
  if (seconds > 100 * 365 * 86400) return "forever";
  return seconds < 1 ? "now" : `${durationInWords(seconds, Math.round)} from now`;
}
