// Pulling models from a Hugging Face hub look-alike on loopback: the listing API, resolve
// URLs that redirect LFS files to storage (X-Linked-Etag / X-Linked-Size on the redirect),
// dropped connections, lying checksums, missing repositories, and what the store keeps.
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import {
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import * as mx from "../src/mlx";
import { loadModel, type LoadedModel } from "../src/models/load";
import { parseHFSpec, pullHFRepo } from "../src/store/hf";
import { readManifest } from "../src/store/manifest";
import { locksDir, modelKey } from "../src/store/paths";
import { modelRequest, pullModel } from "../src/store/pull";
import { formatBytes } from "../src/format";
import { createProgressReporter } from "../src/store/progress";
import { releaseModel } from "../src/store/in-use";
import { listModels, openStoredModel } from "../src/store/store";
import { resolveModelPath } from "../src/store/resolve";
import { verifyStore } from "../src/store/verify";
import { modelPooling } from "../src/models/pooling";
import { cliRunner } from "./helpers/cli";
import { writeTinyModel } from "./helpers/tiny-model";
import { eventually, post, serve, startServe } from "./helpers/serve";
import {
  fakeWeights,
  serveBytes,
  sha256Hex,
  startHfHub,
  startServer,
  type Reply,
  type TestServer,
} from "./helpers/store";

const TEST_TIMEOUT_MS = 60_000;
const main = join(import.meta.dir, "..", "src", "main.ts");

let work: string;
let tiny: Map<string, Uint8Array>;
let sharded: Map<string, Uint8Array>;
let retrainedWeights: Uint8Array;
let servers: TestServer[] = [];
const savedEnv = { ...process.env };

function filesOf(dir: string): Map<string, Uint8Array> {
  return new Map(readdirSync(dir).map((name) => [name, new Uint8Array(readFileSync(join(dir, name)))]));
}

beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), "mlx-hf-"));
  writeTinyModel(join(work, "tiny"));
  tiny = filesOf(join(work, "tiny"));
  // The same model in two shards with an index, as larger hub models come.
  const shardDir = join(work, "sharded");
  writeTinyModel(shardDir, { seed: 3 });
  const { tensors } = mx.loadSafetensors(join(shardDir, "model.safetensors"));
  const names = [...tensors.keys()].sort();
  const weightMap: Record<string, string> = {};
  for (const [part, slice] of [names.slice(0, names.length / 2), names.slice(names.length / 2)].entries()) {
    const file = `model-0000${part + 1}-of-00002.safetensors`;
    mx.saveSafetensors(join(shardDir, file), new Map(slice.map((n) => [n, tensors.get(n)!])), { format: "mlx" });
    for (const n of slice) weightMap[n] = file;
  }
  for (const t of tensors.values()) t.free();
  rmSync(join(shardDir, "model.safetensors"));
  writeFileSync(
    join(shardDir, "model.safetensors.index.json"),
    JSON.stringify({ metadata: {}, weight_map: weightMap }),
  );
  // A stray consolidated copy that the index does not name: it must not be downloaded.
  writeFileSync(join(shardDir, "consolidated.safetensors"), "not needed");
  sharded = filesOf(shardDir);
  // Weights of their own, for a branch moved to a new commit.
  writeTinyModel(join(work, "retrained"), { seed: 7 });
  retrainedWeights = new Uint8Array(readFileSync(join(work, "retrained", "model.safetensors")));
});

afterAll(() => rmSync(work, { recursive: true, force: true }));

beforeEach(() => {
  process.env.MLX_HOME = mkdtempSync(join(work, "home-"));
  delete process.env.HF_TOKEN;
  delete process.env.HUGGING_FACE_HUB_TOKEN;
  // No token saved by a `huggingface-cli login` on this machine may take part.
  delete process.env.HF_TOKEN_PATH;
  process.env.HF_HOME = join(process.env.MLX_HOME, "no-huggingface-home");
  delete process.env.HF_HUB_OFFLINE;
  delete process.env.TRANSFORMERS_OFFLINE;
});

afterEach(async () => {
  await Promise.all(servers.map((s) => s.close()));
  servers = [];
  process.env = { ...savedEnv };
});

/**
 * The hub and its storage (two origins); the requests of both, in order, are on the hub's list.
 * `expireLinks` expires the signed storage links given so far (of repositories with signedLinks).
 */
async function startHub(
  repos: Parameters<typeof startHfHub>[0],
): Promise<TestServer & Pick<Awaited<ReturnType<typeof startHfHub>>, "expireLinks" | "repos">> {
  const { hub, storage, expireLinks, repos: served } = await startHfHub(repos);
  servers = [hub, storage];
  process.env.HF_ENDPOINT = hub.url;
  return Object.assign(hub, { expireLinks, repos: served });
}

const pull = (spec: string) => pullModel(modelRequest(spec), {});

/**
 * A process using org/tiny through `dir` (fixtures/store-revision-reader.ts: it marks the model in
 * use and reads it), once it has started; `stop()` has it print what it saw and exit.
 */
async function revisionReader(dir: string) {
  const home = process.env.MLX_HOME!;
  const [stopFile, ready] = [join(home, "stop"), join(home, "ready")];
  const reader = Bun.spawn(
    [process.execPath, join(import.meta.dir, "fixtures", "store-revision-reader.ts"), dir, "org/tiny", stopFile, ready],
    { env: process.env, stdout: "pipe", stderr: "inherit" },
  );
  while (!existsSync(ready)) await Bun.sleep(10);
  return { reader, stop: () => writeFileSync(stopFile, "") };
}

/** Makes a stored model's name a directory of links, as an older mlx links it: models/<key>/<file> -> ../../blobs/sha256-<hex>. */
function linkAsOlderMlx(dir: string, name: string): void {
  rmSync(dir);
  mkdirSync(dir);
  for (const f of readManifest(name)!.files)
    symlinkSync(join("..", "..", "blobs", `sha256-${f.sha256}`), join(dir, f.name));
}

// Loaded models are kept referenced until the process ends: today a LoadedModel that the
// garbage collector reaches (freed or not) crashes Bun in an MLX finalizer.
const loaded: LoadedModel[] = [];
function load(path: string): LoadedModel {
  const lm = loadModel(path);
  loaded.push(lm);
  return lm;
}
/**
 * A mirror of org/tiny whose listing names no commit (as some do), at any revision: `files()` as
 * they are now, each with an ETag of `version()` and its digest.
 */
function commitlessMirror(files: () => Map<string, Uint8Array>, version = () => 1): Promise<TestServer> {
  return startServer((request): Reply => {
    const path = decodeURIComponent(request.path);
    if (path.startsWith("/api/models/org/tiny/revision/"))
      return {
        status: 200,
        body: JSON.stringify({ siblings: [...files().keys()].map((rfilename) => ({ rfilename })) }),
      };
    const data = files().get(path.split("/").at(-1)!);
    if (!data) return { status: 404, headers: { "X-Error-Code": "EntryNotFound" } };
    const etag = { ETag: `"v${version()}-${sha256Hex(data).slice(0, 32)}"` };
    if (request.method === "HEAD") return { status: 200, headers: { ...etag, "Content-Length": String(data.length) } };
    const reply = serveBytes(data, request);
    return { ...reply, headers: { ...reply.headers, ...etag } };
  });
}

const paths = (s: TestServer) => s.requests.map((r) => `${r.method} ${decodeURIComponent(r.path)}`);

describe("parseHFSpec", () => {
  test("repo and revision", () => {
    expect(parseHFSpec("hf:org/model")).toEqual({ repo: "org/model", revision: "main" });
    expect(parseHFSpec("hf:org/model@v1.0")).toEqual({ repo: "org/model", revision: "v1.0" });
    expect(() => parseHFSpec("hf:model")).toThrow("expected hf:<org>/<repo>[@revision][:<quantization>]");
    expect(() => parseHFSpec("hf:org/../x")).toThrow("expected hf:<org>/<repo>[@revision][:<quantization>]");
  });

  test("a GGUF repository's quantization, after the revision", () => {
    expect(parseHFSpec("hf:org/model-GGUF:Q4_K_M")).toEqual({
      repo: "org/model-GGUF",
      revision: "main",
      quantization: "Q4_K_M",
    });
    expect(parseHFSpec("hf:org/model-GGUF@v1:q8_0")).toEqual({
      repo: "org/model-GGUF",
      revision: "v1",
      quantization: "q8_0",
    });
    expect(() => parseHFSpec("hf:org/model:Q4:K")).toThrow("expected hf:<org>/<repo>[@revision][:<quantization>]");
  });
});

describe("a store this process cannot write (a read-only mount)", () => {
  // The default model's GGUF, from the store the tests run with (pulled there if it is not yet:
  // each test has a store of its own).
  let defaultGguf: string;
  beforeAll(async () => {
    defaultGguf = await resolveModelPath(undefined);
  });
  // A bind mount in a user namespace, where the system allows one: permission bits alone deny
  // root nothing, and the tests may run as root.
  const readOnly = (script: string) => {
    const home = process.env.MLX_HOME!;
    return Bun.spawn(["unshare", "-rm", "sh", "-c", `mount --bind -o ro ${home} ${home} && ${script}`], {
      env: { ...process.env, NO_COLOR: "1" },
      stdout: "pipe",
      stderr: "pipe",
    });
  };
  const mlx = (args: string) => `${JSON.stringify(process.execPath)} ${JSON.stringify(main)} ${args}`;

  test.skipIf(Bun.spawnSync(["unshare", "-rm", "true"], { stderr: "ignore" }).exitCode !== 0)(
    "is read without its lock (list, verify, run, serve), and a change to it is one line naming it",
    async () => {
      await startHub({ "org/tiny": { files: tiny } });
      await pull("hf:org/tiny");
      releaseModel("org/tiny"); // else rm refuses it as in use by this process, before taking the lock
      const home = process.env.MLX_HOME!;
      const reads = readOnly(
        [
          mlx("list"),
          mlx("verify"),
          mlx("run -m hf:org/tiny --max-tokens 1 Hi"),
          `${mlx("rm -y org/tiny")}; echo "rm: $?"`,
        ].join(" && "),
      );
      const [stdout, stderr] = [await new Response(reads.stdout).text(), await new Response(reads.stderr).text()];
      expect(await reads.exited).toBe(0);
      expect(stdout).toMatch(/^org\/tiny\s+mlx/m);
      expect(stdout).toContain("all stored models are intact\n");
      expect(stdout).toEndWith("rm: 1\n");
      expect(stderr).toEndWith(
        `error: the store ${home} is not writable (EROFS: read-only file system): pulling, converting, fusing, copying or removing models needs write access to $MLX_HOME\n`,
      );
      expect((await listModels()).map((m) => m.name)).toEqual(["org/tiny"]);

      const server = readOnly(`exec ${mlx("serve --port 0 -m hf:org/tiny")}`);
      try {
        const reader = server.stderr.getReader();
        let said = "";
        while (!/listening on (http:\S+)/.test(said)) {
          const { value, done } = await reader.read();
          if (done) throw new Error(`serve exited: ${said}`);
          said += new TextDecoder().decode(value);
        }
        const url = /listening on (http:\S+)/.exec(said)![1]!;
        const answer = await post(`${url}/v1/chat/completions`, {
          messages: [{ role: "user", content: "Hi" }],
          max_tokens: 1,
        });
        expect(answer.status).toBe(200);
      } finally {
        server.kill();
        await server.exited;
      }
    },
    TEST_TIMEOUT_MS,
  );
  test.skipIf(Bun.spawnSync(["unshare", "-rm", "true"], { stderr: "ignore" }).exitCode !== 0)(
    "runs a GGUF model too, which MLX's reader opens for writing: it reads a copy",
    async () => {
      const { name } = modelRequest(defaultGguf);
      await pull(defaultGguf);
      releaseModel(name);
      const run = readOnly(mlx(`run -m ${name} --raw --max-tokens 1 Hi`));
      const [stdout, stderr] = [await new Response(run.stdout).text(), await new Response(run.stderr).text()];
      expect(stderr).toBe("");
      expect(await run.exited).toBe(0);
      expect(stdout.trim()).not.toBe("");
    },
    TEST_TIMEOUT_MS,
  );
});

describe("pull from a repository of GGUF files", () => {
  // The default model's GGUF, from the store the tests run with (each test has a store of its own).
  let real: Uint8Array;
  beforeAll(async () => {
    real = new Uint8Array(readFileSync(await resolveModelPath(undefined)));
  });
  const notThisOne = new TextEncoder().encode("GGUF: not the file asked for");

  test(
    "the file of the quantization named (any case), stored as a GGUF model that loads; no other file fetched",
    async () => {
      const files = new Map([
        ["SmolLM2-135M-Instruct-Q4_1.gguf", real],
        ["SmolLM2-135M-Instruct-Q8_0.gguf", notThisOne],
        ["mmproj-SmolLM2-f16.gguf", notThisOne],
      ]);
      const s = await startHub({ "org/smol-GGUF": { files } });
      const pulled = await pull("hf:org/smol-GGUF:q4_1");
      const manifest = readManifest("org/smol-GGUF:q4_1")!;
      expect(manifest).toMatchObject({ source: "hf:org/smol-GGUF:q4_1", format: "gguf", architecture: "llama" });
      expect(manifest.files).toEqual([
        { name: "SmolLM2-135M-Instruct-Q4_1.gguf", sha256: sha256Hex(real), size: real.length },
      ]);
      expect(paths(s).filter((p) => p.startsWith("GET /lfs/"))).toEqual([`GET /lfs/${sha256Hex(real)}`]);
      expect(load(pulled.path).config.numHiddenLayers).toBe(30);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a file in a folder of the repository (Q8_0/...) is asked for by its path, slashes kept, as huggingface_hub asks",
    async () => {
      const files = new Map([
        ["Q4_1/SmolLM2-135M-Instruct-Q4_1.gguf", real],
        ["Q8_0/SmolLM2-135M-Instruct-Q8_0.gguf", notThisOne],
      ]);
      const s = await startHub({ "org/folders-GGUF": { files } });
      const pulled = await pull("hf:org/folders-GGUF:Q4_1");
      // The sha the hub gives a repository unless told (startHfHub).
      const asked = `/org/folders-GGUF/resolve/${"a".repeat(40)}/Q4_1/SmolLM2-135M-Instruct-Q4_1.gguf`;
      expect(s.requests.map((r) => r.path)).toContain(asked);
      expect(load(pulled.path).config.numHiddenLayers).toBe(30);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "without a quantization: Q4_K_M as Ollama, or the only file; a missing or split one is a one-line error naming the files",
    async () => {
      const files = new Map([
        ["model-Q4_K_S.gguf", notThisOne],
        ["model-Q8_0.gguf", notThisOne],
        ["big/model-Q4_K_M-00001-of-00002.gguf", notThisOne],
        ["big/model-Q4_K_M-00002-of-00002.gguf", notThisOne],
      ]);
      await startHub({
        "org/several-GGUF": { files },
        "org/one-GGUF": { files: new Map([["model-Q6_K.gguf", notThisOne]]) },
      });
      await expect(pull("hf:org/several-GGUF")).rejects.toThrow(
        "the Q4_K_M model is split in several GGUF files, which mlx cannot load (one file only)",
      );
      await expect(pull("hf:org/several-GGUF:Q4_K")).rejects.toThrow(
        "org/several-GGUF has no Q4_K GGUF file: name one as hf:org/several-GGUF:<quantization>, or by its file name without .gguf (model-Q4_K_S.gguf, model-Q8_0.gguf, big/model-Q4_K_M-00001-of-00002.gguf, big/model-Q4_K_M-00002-of-00002.gguf)",
      );
      // The only file is taken (it is no GGUF a model loads from: the error is the header's).
      await expect(pull("hf:org/one-GGUF")).rejects.toThrow("GGUF");
      await expect(pull("hf:org/one-GGUF")).rejects.not.toThrow("no Q4_K_M");
    },
    TEST_TIMEOUT_MS,
  );
  test(
    "a projector named after its model (llava-v1.5-7b-mmproj-model-f16.gguf) is not taken for the model of its quantization",
    async () => {
      const files = new Map([
        ["llava-v1.5-7b-f16.gguf", real],
        ["llava-v1.5-7b-mmproj-model-f16.gguf", notThisOne],
      ]);
      const s = await startHub({ "org/llava-GGUF": { files } });
      await pull("hf:org/llava-GGUF:f16");
      expect(readManifest("org/llava-GGUF:f16")!.files.map((f) => f.name)).toEqual(["llava-v1.5-7b-f16.gguf"]);
      expect(paths(s).filter((p) => p.startsWith("GET /lfs/"))).toEqual([`GET /lfs/${sha256Hex(real)}`]);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a quantization asked of a repository without GGUF files says so, not an empty list of files",
    async () => {
      await startHub({ "org/tiny": { files: tiny } });
      await expect(pull("hf:org/tiny:Q8_0")).rejects.toThrow(
        "hf:org/tiny:Q8_0: org/tiny has no GGUF files to choose a quantization from: pull it without ':Q8_0'",
      );
    },
    TEST_TIMEOUT_MS,
  );
});

describe("pull from the hub", () => {
  test(
    "fetches only the files a model needs, into blobs, as a directory loadModel reads",
    async () => {
      const s = await startHub({ "org/tiny": { files: tiny } });
      process.env.HF_TOKEN = "secret";
      const pulled = await pull("hf:org/tiny");

      expect(pulled.fromDisk).toBe(false);
      const fetched = paths(s).filter((p) => p.startsWith("GET /org/") || p.startsWith("GET /lfs/"));
      expect(fetched.some((p) => p.includes("README") || p.includes(".bin"))).toBe(false);
      // The token goes to the hub, not to the storage the LFS file is redirected to.
      expect(s.requests.find((r) => r.path.startsWith("/api/"))!.headers.authorization).toBe("Bearer secret");
      expect(s.requests.find((r) => r.path.startsWith("/lfs/"))!.headers.authorization).toBeUndefined();

      expect(lstatSync(join(pulled.path, "model.safetensors")).isSymbolicLink()).toBe(true);
      expect(load(pulled.path).config.numHiddenLayers).toBe(2);

      const manifest = readManifest("org/tiny")!;
      expect(manifest).toMatchObject({
        source: "hf:org/tiny",
        format: "mlx",
        architecture: "llama",
        revision: "a".repeat(40),
      });
      expect(manifest.files.map((f) => f.name).sort()).toEqual([...tiny.keys()].sort());
      expect(manifest.totalBytes).toBe([...tiny.values()].reduce((n, d) => n + d.length, 0));
      const [listed] = await listModels();
      expect(listed).toMatchObject({ name: "org/tiny", format: "mlx", totalBytes: manifest.totalBytes });
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a sentence-transformers model keeps its Pooling folder and prompts: pulled or stored from a directory, it embeds as the directory does",
    async () => {
      const modules = [
        { idx: 0, name: "0", path: "", type: "sentence_transformers.models.Transformer" },
        { idx: 1, name: "1", path: "1_Pooling", type: "sentence_transformers.models.Pooling" },
        { idx: 2, name: "2", path: "2_Normalize", type: "sentence_transformers.models.Normalize" },
      ];
      const files = new Map(tiny);
      const text = (value: unknown) => new TextEncoder().encode(JSON.stringify(value));
      files.set("modules.json", text(modules));
      files.set("1_Pooling/config.json", text({ pooling_mode_mean_tokens: true }));
      files.set("1_Pooling/README.md", text("not needed"));
      files.set("sentence_bert_config.json", text({ max_seq_length: 32, do_lower_case: false }));
      files.set(
        "config_sentence_transformers.json",
        text({ prompts: { query: "query: " }, default_prompt_name: "query" }),
      );
      await startHub({ "org/mean": { files } });
      const pulled = await pull("hf:org/mean");
      // Before, the folder was dropped: the model was pooled on its last token.
      expect(modelPooling(pulled.path)).toBe("mean");
      const names = readManifest("org/mean")!.files.map((f) => f.name);
      expect(names).toContain("1_Pooling/config.json");
      expect(names).not.toContain("1_Pooling/README.md");
      // Its input length, which the embeddings' context is cut to.
      expect(names).toContain("sentence_bert_config.json");
      // Its prompts, the default one put before every input.
      expect(names).toContain("config_sentence_transformers.json");

      const dir = join(work, "mean-dir");
      mkdirSync(join(dir, "1_Pooling"), { recursive: true });
      for (const [name, data] of files) writeFileSync(join(dir, name), data);
      const stored = await pull(dir);
      expect(modelPooling(stored.path)).toBe("mean");
      expect(existsSync(join(stored.path, "config_sentence_transformers.json"))).toBe(true);
      // Opened again, the directory of links is kept as it is, its folder's links counted with it.
      const linked = lstatSync(join(stored.path, "1_Pooling", "config.json")).mtimeMs;
      expect(await openStoredModel("mean-dir")).toBe(stored.path);
      expect(lstatSync(join(stored.path, "1_Pooling", "config.json")).mtimeMs).toBe(linked);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a model removed (mlx rm) while another that shares its files downloads: the shared files are fetched again and the pull stores its model",
    async () => {
      // Tiny's config and tokenizer, weights of its own.
      const other = new Map([...tiny].filter(([name]) => name !== "model.safetensors"));
      other.set("model.safetensors", fakeWeights(200_000));
      await startHub({ "org/tiny": { files: tiny }, "org/other": { files: other } });
      await pull("hf:org/tiny");
      releaseModel("org/tiny"); // pulled by this test process, not in use
      let removed = false;
      const pulled = await pullModel(modelRequest("hf:org/other"), {
        onProgress: ({ file }) => {
          if (removed || file !== "model.safetensors") return;
          removed = true;
          const rm = Bun.spawnSync([process.execPath, main, "rm", "-y", "org/tiny"], { env: process.env });
          expect(rm.stderr.toString()).toBe("");
        },
      });
      expect(removed).toBe(true);
      expect(pulled.fromDisk).toBe(false);
      expect((await listModels()).map((m) => m.name)).toEqual(["org/other"]);
      for (const file of readManifest("org/other")!.files)
        expect(sha256Hex(readFileSync(join(pulled.path, file.name)))).toBe(file.sha256);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a sharded model: the index's shards and nothing else",
    async () => {
      const s = await startHub({ "org/sharded": { files: sharded } });
      const pulled = await pull("hf:org/sharded");
      expect(paths(s).some((p) => p.includes("consolidated"))).toBe(false);
      expect(readdirSync(pulled.path).sort()).toEqual(
        [...sharded.keys()].filter((n) => n !== "consolidated.safetensors").sort(),
      );
      load(pulled.path);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a second pull is served from disk; two models share the files they have in common",
    async () => {
      const s = await startHub({ "org/tiny": { files: tiny }, "org/sharded": { files: sharded } });
      await pull("hf:org/tiny");
      const before = s.requests.length;
      const again = await pull("hf:org/tiny");
      expect(again.fromDisk).toBe(true);
      expect(s.requests.length).toBe(before);

      await pull("hf:org/sharded");
      const blobs = readdirSync(join(process.env.MLX_HOME!, "blobs"));
      const distinct = new Set(
        [...tiny.values(), ...[...sharded].filter(([n]) => n !== "consolidated.safetensors").map(([, d]) => d)].map(
          sha256Hex,
        ),
      );
      expect(blobs.length).toBe(distinct.size); // tokenizer files are stored once
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a connection dropped mid-file resumes where it stopped",
    async () => {
      const s = await startHub({ "org/tiny": { files: tiny, dropFirst: "model.safetensors" } });
      const pulled = await pull("hf:org/tiny");
      const lfs = s.requests.filter((r) => r.path.startsWith("/lfs/") && r.method === "GET");
      expect(lfs).toHaveLength(2);
      // It resumes from what arrived before the cut (the last bytes sent may be lost with the connection).
      const resumedAt = Number(lfs[1]!.headers.range?.match(/^bytes=(\d+)-$/)?.[1]);
      expect(resumedAt).toBeGreaterThan(0);
      expect(resumedAt).toBeLessThanOrEqual(Math.floor(tiny.get("model.safetensors")!.length / 3));
      load(pulled.path);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a hub behind a CDN that compresses JSON: a file's size is asked uncompressed, as huggingface_hub asks it",
    async () => {
      const s = await startHub({ "org/tiny": { files: tiny, compresses: true } });
      const pulled = await pull("hf:org/tiny");
      // Else the HEAD told config.json's gzip size, and its download was refused as the wrong size.
      const lookups = s.requests.filter((r) => r.method === "HEAD");
      expect(lookups.length).toBeGreaterThan(0);
      for (const lookup of lookups) expect(lookup.headers["accept-encoding"]).toBe("identity");
      expect(readManifest("org/tiny")!.files.find((f) => f.name === "config.json")!.size).toBe(
        tiny.get("config.json")!.length,
      );
      load(pulled.path);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a pull killed mid-file: the next one resumes it and says where, naming the file",
    async () => {
      const s = await startHub({ "org/tiny": { files: tiny } });
      const weights = tiny.get("model.safetensors")!.length;
      const killed = new AbortController();
      await expect(
        pullModel(modelRequest("hf:org/tiny"), {
          signal: killed.signal,
          onProgress: (p) => {
            if (p.file === "model.safetensors" && p.received - (p.total! - weights) > weights / 3)
              killed.abort(new Error("killed"));
          },
        }),
      ).rejects.toThrow("killed");
      const before = s.requests.length;
      const lines: string[] = [];
      const reporter = createProgressReporter("pulling org/tiny", {
        write: (text: string) => lines.push(text),
        isTTY: false,
      });
      const pulled = await pullModel(modelRequest("hf:org/tiny"), { onProgress: reporter.update });
      reporter.finish();
      load(pulled.path);
      const lfs = s.requests.filter((r) => r.path.startsWith("/lfs/") && r.method === "GET");
      const resumedAt = Number(lfs.at(-1)!.headers.range?.match(/^bytes=(\d+)-$/)?.[1]);
      expect(resumedAt).toBeGreaterThan(weights / 3);
      expect(lines).toHaveLength(1);
      expect(lines[0]).toEndWith(`, resumed model.safetensors at ${formatBytes(resumedAt)}\n`);
      // Only what came over the network counts as transferred: the rest of the weights, and the
      // small git-stored files (fetched again: their ETag is no sha256 to find them by).
      const gitFiles = s.requests.slice(before).filter((r) => r.method === "GET" && r.path.includes("/resolve/"));
      const expected =
        weights -
        resumedAt +
        gitFiles.reduce((n, r) => n + tiny.get(decodeURIComponent(r.path.split("/").at(-1)!))!.length, 0);
      const sent = Number(lines[0]!.match(/^pulling org\/tiny: ([\d.]+) MB/)?.[1]) * 1e6;
      expect(Math.abs(sent - expected)).toBeLessThan(100_000);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "signed storage links that expired before a file's turn or before a resume are asked of the hub again",
    async () => {
      const first = "model-00001-of-00002.safetensors";
      const second = "model-00002-of-00002.safetensors";
      const s = await startHub({ "org/sharded": { files: sharded, signedLinks: true, dropFirst: first } });
      let expired = false;
      const pulled = await pullModel(modelRequest("hf:org/sharded"), {
        onProgress: (p) => {
          // Every link is given before the first shard starts; on the hub's CDN they expire
          // within the hour that a large shard's download may take.
          if (p.file === first && !expired) {
            expired = true;
            s.expireLinks();
          }
        },
      });
      load(pulled.path);
      const storageGets = (data: Uint8Array) =>
        s.requests
          .filter((r) => r.method === "GET" && r.path.startsWith(`/lfs/${sha256Hex(data)}`))
          .map((r) => `${r.path.split("?")[1]} ${r.headers.range ?? "whole"}`);
      // The first shard, cut short, resumes from a fresh link where the old one is refused.
      expect(storageGets(sharded.get(first)!)).toEqual([
        "expires=0 whole",
        expect.stringMatching(/^expires=0 bytes=\d+-$/),
        expect.stringMatching(/^expires=1 bytes=\d+-$/),
      ]);
      expect(storageGets(sharded.get(second)!)).toEqual(["expires=0 whole", "expires=1 whole"]);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "two models that share a weights file, pulled at once, both arrive intact",
    async () => {
      // A fork or mirror of a repository holds the same LFS file: both pulls want the same blob.
      await startHub({ "org/tiny": { files: tiny }, "org/mirror": { files: tiny } });
      const [first, second] = await Promise.all([pull("hf:org/tiny"), pull("hf:org/mirror")]);
      expect(await openStoredModel("org/tiny")).toBe(first.path);
      expect(await openStoredModel("org/mirror")).toBe(second.path);
      const blobs = readdirSync(join(process.env.MLX_HOME!, "blobs"));
      expect(blobs).toContain(`sha256-${sha256Hex(tiny.get("model.safetensors")!)}`);
      expect(blobs.some((f) => f.endsWith(".partial"))).toBe(false);
      load(first.path);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "one repository pulled under two names at once (a branch and its commit): both arrive, neither moves the other's download of a git-stored file",
    async () => {
      // Both download config.json and the tokenizer files to the same staging file (one commit,
      // one URL): the first to finish moved it into blobs once the download's lock was gone,
      // which could be the second's own download, finished meanwhile (ENOENT). A race: tried
      // several times, each in a store of its own.
      await startHub({ "org/tiny": { files: tiny } });
      const failed: string[] = [];
      for (let attempt = 0; attempt < 20; attempt++) {
        process.env.MLX_HOME = mkdtempSync(join(work, "home-"));
        const pulls = await Promise.allSettled([pull("hf:org/tiny"), pull(`hf:org/tiny@${"a".repeat(40)}`)]);
        for (const p of pulls) if (p.status === "rejected") failed.push(String(p.reason));
      }
      expect(failed).toEqual([]);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "one model pulled under two names and from a fork by three processes at once: each file is downloaded once",
    async () => {
      const hub = await startHub({ "org/tiny": { files: tiny }, "org/fork": { files: tiny } });
      const pulls = ["hf:org/tiny", `hf:org/tiny@${"a".repeat(40)}`, "hf:org/fork"].map((spec) =>
        Bun.spawn([process.execPath, main, "pull", spec], { env: process.env, stdout: "ignore", stderr: "pipe" }),
      );
      for (const proc of pulls) expect(await proc.exited).toBe(0);
      for (const name of ["org/tiny", `org/tiny@${"a".repeat(40)}`, "org/fork"])
        expect(
          readManifest(name)!
            .files.map((f) => f.name)
            .sort(),
        ).toEqual([...tiny.keys()].sort());
      // Each file by what it is: a git-stored file's ETag (its git blob id), an LFS file's sha256.
      const downloads = paths(hub).filter((p) => p.startsWith("GET ") && !p.startsWith("GET /api/"));
      const fetched = downloads.map((p) =>
        p.startsWith("GET /lfs/") ? p : p.replace(/^GET \/[^/]+\/[^/]+\/resolve\/[^/]+\//, ""),
      );
      expect(fetched.sort()).toEqual(
        [...tiny.keys()]
          .map((name) => (name === "model.safetensors" ? `GET /lfs/${sha256Hex(tiny.get(name)!)}` : name))
          .sort(),
      );
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a file that does not match its checksum is rejected; nothing complete-looking is left and other models stay intact",
    async () => {
      await startHub({
        "org/tiny": { files: tiny },
        "org/liar": { files: sharded, lieAbout: "model-00001-of-00002.safetensors" },
      });
      const good = await pull("hf:org/tiny");
      await expect(pull("hf:org/liar")).rejects.toThrow(/checksum mismatch .* expected sha256 0{64}/);

      expect(readManifest("org/liar")).toBeUndefined();
      expect(existsSync(join(process.env.MLX_HOME!, "models", "org%2Fliar"))).toBe(false);
      expect(
        readdirSync(join(process.env.MLX_HOME!, "blobs")).some(
          (f) => f.includes("0".repeat(64)) || f.endsWith(".partial"),
        ),
      ).toBe(false);
      expect((await listModels()).map((m) => m.name)).toEqual(["org/tiny"]);
      expect(await openStoredModel("org/tiny")).toBe(good.path);
      load(good.path);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a download's error names the repository's file, and never the signature (query) of the storage link it came from",
    async () => {
      await startHub({ "org/liar": { files: tiny, lieAbout: "model.safetensors", signedLinks: true } });
      const error = await pull("hf:org/liar").catch((e) => e);
      expect(error.message).toMatch(
        /^model\.safetensors: checksum mismatch for http:\/\/127\.0\.0\.1:\d+\/lfs\/[0-9a-f]{64}: expected sha256 0{64}, got [0-9a-f]{64}$/,
      );
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a model larger than the free disk space is refused before any download",
    async () => {
      const s = await startHub({ "org/huge": { files: tiny, claimSizes: { "model.safetensors": 1e15 } } });
      await expect(pull("hf:org/huge")).rejects.toThrow(
        /^not enough disk space in .* for hf:org\/huge: about 100000\d{4} MB needed, \d+ MB free$/,
      );
      // As the system's full disk: a server answers it 507, not as the hub's failure (502).
      await expect(pull("hf:org/huge")).rejects.toMatchObject({ code: "ENOSPC" });
      expect(paths(s).some((p) => p.startsWith("GET /lfs/"))).toBe(false);
      expect(readManifest("org/huge")).toBeUndefined();
    },
    TEST_TIMEOUT_MS,
  );

  // A small disk: a tmpfs in a user namespace (as store-models.test.ts mounts one).
  test.skipIf(Bun.spawnSync(["unshare", "-rm", "true"], { stderr: "ignore" }).exitCode !== 0)(
    "a model a fraction of a megabyte larger than the room left: the numbers say which is larger",
    async () => {
      // About 3.5 MB needed on a disk of 3 MiB (3.1 MB): both rounded up, "4 MB needed, 4 MB free".
      const others = [...tiny].filter(([name]) => name !== "model.safetensors").reduce((n, [, d]) => n + d.length, 0);
      await startHub({ "org/big": { files: tiny, claimSizes: { "model.safetensors": 3_500_000 - others } } });
      const disk = join(work, "small-disk");
      mkdirSync(disk);
      const script = `mount -t tmpfs -o size=3m tmpfs ${disk} && MLX_HOME=${disk}/home ${JSON.stringify(process.execPath)} ${JSON.stringify(main)} pull hf:org/big`;
      const proc = Bun.spawn(["unshare", "-rm", "sh", "-c", script], {
        env: { ...process.env, NO_COLOR: "1" },
        stdout: "pipe",
        stderr: "pipe",
      });
      const [stderr, code] = await Promise.all([new Response(proc.stderr).text(), proc.exited]);
      expect(code).toBe(1);
      const [, needed, free] =
        stderr.match(/^error: not enough disk space in .* for hf:org\/big: about (\d+) MB needed, (\d+) MB free\n$/) ??
        [];
      expect([Number(needed), Number(free)]).toEqual([4, 3]);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a hub that never answers a file's lookup fails the pull in time, naming the file's URL",
    async () => {
      await startHub({ "org/tiny": { files: tiny, silentAbout: "model.safetensors" } });
      const started = pullHFRepo("hf:org/tiny", { hubTimeoutMs: 500 });
      await expect(started).rejects.toThrow(
        `cannot reach ${servers[0]!.url}/org/tiny/resolve/${"a".repeat(40)}/model.safetensors: no answer in 0.5 s`,
      );
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a hub that goes quiet halfway through the listing fails the pull in time, saying so",
    async () => {
      const listing = JSON.stringify({ sha: "a".repeat(40), siblings: [{ rfilename: "config.json" }] });
      const hub = await startServer(() => ({
        status: 200,
        headers: { "Content-Type": "application/json" },
        body: listing,
        stallAfter: 10,
      }));
      servers = [hub];
      process.env.HF_ENDPOINT = hub.url;
      await expect(pullHFRepo("hf:org/tiny", { hubTimeoutMs: 500 })).rejects.toThrow(
        `cannot reach the Hugging Face hub at ${hub.url}: no complete answer in 0.5 s`,
      );
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a network's login page answering for the hub (a captive portal) is said to be a web page",
    async () => {
      const portal = await startServer(() => ({
        status: 200,
        headers: { "Content-Type": "text/html; charset=utf-8" },
        body: "<html><body>Accept the terms to use this Wi-Fi</body></html>",
      }));
      servers = [portal];
      process.env.HF_ENDPOINT = portal.url;
      await expect(pullHFRepo("hf:org/tiny")).rejects.toThrow(
        `${portal.url}/api/models/org/tiny/revision/main did not answer with a repository listing: it answered a web page (a network's login page or a proxy in the way? or HF_ENDPOINT not a hub)`,
      );
      expect(portal.requests).toHaveLength(1);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a hub whose connection drops halfway through the listing says so, not that it answered no listing",
    async () => {
      const listing = JSON.stringify({ sha: "a".repeat(40), siblings: [{ rfilename: "config.json" }] });
      const hub = await startServer(() => ({
        status: 200,
        headers: { "Content-Type": "application/json" },
        body: listing,
        dropAfter: 10,
      }));
      servers = [hub];
      process.env.HF_ENDPOINT = hub.url;
      await expect(pullHFRepo("hf:org/tiny")).rejects.toThrow(
        `cannot reach the Hugging Face hub at ${hub.url}: the connection closed before the listing was complete`,
      );
      expect(hub.requests).toHaveLength(1);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a busy hub (429, 503) is asked again, as huggingface_hub does; one that stays busy is one line saying it gave up",
    async () => {
      // Its listing and each file's lookup answered busy twice: each is asked again, and the pull completes.
      const s = await startHub({ "org/tiny": { files: tiny, busy: 2 }, "org/down": { files: tiny, busy: 100 } });
      load((await pull("hf:org/tiny")).path);
      expect(paths(s).filter((p) => p.startsWith("GET /api/models/org/tiny/"))).toHaveLength(3);
      expect(paths(s).filter((p) => p.startsWith("HEAD /org/tiny/resolve/"))).toHaveLength(3 * tiny.size);
      const proc = Bun.spawn([process.execPath, main, "pull", "hf:org/down"], {
        env: process.env,
        stdout: "pipe",
        stderr: "pipe",
      });
      const [stderr, code] = await Promise.all([new Response(proc.stderr).text(), proc.exited]);
      expect(code).toBe(1);
      expect(stderr).toMatch(
        /^error: GET http:\/\/127\.0\.0\.1:\d+\/api\/models\/org\/down\/revision\/main: HTTP (429 Too Many Requests|503 Service Unavailable) \(gave up after 4 retries\)\n$/,
      );
      expect(readManifest("org/down")).toBeUndefined();
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a missing repository is one clear line from the CLI",
    async () => {
      await startHub({});
      const proc = Bun.spawn([process.execPath, main, "pull", "hf:org/missing"], {
        env: { ...process.env },
        stdout: "pipe",
        stderr: "pipe",
      });
      const [stderr, code] = await Promise.all([new Response(proc.stderr).text(), proc.exited]);
      expect(code).toBe(1);
      expect(stderr).toBe(
        `error: hf:org/missing: repository org/missing not found on ${servers[0]!.url} (a private one needs HF_TOKEN)\n`,
      );
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "HF_HUB_OFFLINE=1, as huggingface_hub reads it: a stored model is used, one not stored is one line, and the hub is never asked",
    async () => {
      const s = await startHub({ "org/tiny": { files: tiny } });
      await pull("hf:org/tiny");
      const asked = s.requests.length;
      for (const [variable, model, code] of [
        ["HF_HUB_OFFLINE", "hf:org/tiny", 0],
        ["HF_HUB_OFFLINE", "hf:org/other", 1],
        ["TRANSFORMERS_OFFLINE", "hf:org/other", 1],
      ] as const) {
        const proc = Bun.spawn([process.execPath, main, "pull", model], {
          env: { ...process.env, [variable]: "1" },
          stdout: "pipe",
          stderr: "pipe",
        });
        const [stderr, exited] = await Promise.all([new Response(proc.stderr).text(), proc.exited]);
        expect(exited).toBe(code);
        if (code === 1)
          expect(stderr).toBe(
            `error: ${model}: ${variable} is set, so the hub is not asked for the model's files (unset ${variable} to pull it)\n`,
          );
      }
      expect(s.requests.length).toBe(asked);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a mirror's credentials in HF_ENDPOINT never show in a message",
    async () => {
      const hub = await startHub({});
      // The hub, answering "not found"; and a port nothing listens on (1), refusing the connection.
      for (const endpoint of [hub.url.replace("http://", "http://user:s3cret@"), "http://user:s3cret@127.0.0.1:1"]) {
        const proc = Bun.spawn([process.execPath, main, "pull", "hf:org/missing"], {
          env: { ...process.env, HF_ENDPOINT: endpoint },
          stdout: "pipe",
          stderr: "pipe",
        });
        const [stderr, code] = await Promise.all([new Response(proc.stderr).text(), proc.exited]);
        expect(code).toBe(1);
        expect(stderr).toStartWith("error: ");
        expect(stderr).not.toContain("s3cret");
      }
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a private repository: without HF_TOKEN, with a token the hub refuses, and with its own, each says what to do",
    async () => {
      await startHub({ "org/private": { files: tiny, token: "hf_right" } });
      const hub = servers[0]!.url;
      await expect(pull("hf:org/private")).rejects.toThrow(
        `hf:org/private: repository org/private not found on ${hub} (a private one needs HF_TOKEN)`,
      );
      process.env.HF_TOKEN = "hf_expired";
      await expect(pull("hf:org/private")).rejects.toThrow(
        `hf:org/private: ${hub} refused HF_TOKEN (Invalid credentials in Authorization header)`,
      );
      process.env.HF_TOKEN = "hf_right";
      load((await pull("hf:org/private")).path);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "the token `huggingface-cli login` saved is used without HF_TOKEN, as huggingface_hub does",
    async () => {
      await startHub({ "org/private": { files: tiny, token: "hf_saved" } });
      process.env.HF_HOME = join(process.env.MLX_HOME!, "huggingface");
      mkdirSync(process.env.HF_HOME);
      const saved = join(process.env.HF_HOME, "token");
      writeFileSync(saved, "hf_stale\n");
      await expect(pull("hf:org/private")).rejects.toThrow(
        `hf:org/private: ${servers[0]!.url} refused the token in ${saved} (Invalid credentials in Authorization header)`,
      );
      writeFileSync(saved, "hf_saved\n");
      load((await pull("hf:org/private")).path);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "HUGGING_FACE_HUB_TOKEN, HF_TOKEN's older name that huggingface_hub still reads, is used; HF_TOKEN first",
    async () => {
      await startHub({ "org/private": { files: tiny, token: "hf_right" } });
      process.env.HUGGING_FACE_HUB_TOKEN = "hf_wrong";
      await expect(pull("hf:org/private")).rejects.toThrow(
        `hf:org/private: ${servers[0]!.url} refused HUGGING_FACE_HUB_TOKEN (Invalid credentials in Authorization header)`,
      );
      process.env.HF_TOKEN = "hf_right";
      await pull("hf:org/private");
      process.env.HUGGING_FACE_HUB_TOKEN = "hf_right";
      delete process.env.HF_TOKEN;
      await pull("hf:org/private@main");
      expect(readManifest("org/private@main")).toBeDefined();
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a repository without tokenizer.json is refused before its weights are fetched (it was stored, and every load called it damaged)",
    async () => {
      const tokenizerless = new Map([...tiny].filter(([name]) => !name.startsWith("tokenizer")));
      const s = await startHub({ "org/tokenizerless": { files: tokenizerless } });
      await expect(pull("hf:org/tokenizerless")).rejects.toThrow(
        "hf:org/tokenizerless: no tokenizer.json beside config.json: mlx reads the model's tokenizer from it",
      );
      expect(paths(s).some((p) => p.startsWith("GET /lfs/"))).toBe(false);
      expect(readManifest("org/tokenizerless")).toBeUndefined();
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a renamed repository: its files' lookups follow the hub's redirect to the new name, so its weights are checked and those stored are not fetched again",
    async () => {
      const s = await startHub({
        "org/tiny": { files: tiny },
        "old-org/tiny": { files: new Map(), movedTo: "org/tiny" },
        "old-org/liar": { files: new Map(), movedTo: "org/liar" },
        "org/liar": { files: tiny, lieAbout: "model.safetensors" },
      });
      await pull("hf:org/tiny");
      const before = s.requests.length;
      load((await pull("hf:old-org/tiny")).path);
      expect(
        paths(s)
          .slice(before)
          .filter((p) => p.startsWith("GET /lfs/")),
      ).toEqual([]);
      // The sha256 the hub gives past the redirect is the one the download is checked against.
      await expect(pull("hf:old-org/liar")).rejects.toThrow(/checksum mismatch .* expected sha256 0{64}/);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "mlx run of a model not stored yet says which models its pull evicted, as mlx pull says them (it was silent)",
    async () => {
      // The same tiny model with weights of its own.
      writeTinyModel(join(work, "other"), { seed: 5 });
      await startHub({ "org/tiny": { files: tiny }, "org/other": { files: filesOf(join(work, "other")) } });
      await pull("hf:org/tiny");
      releaseModel("org/tiny"); // pulled by this test process, not in use
      const proc = Bun.spawn([process.execPath, main, "run", "-m", "hf:org/other", "--max-tokens", "1", "Hi"], {
        env: { ...process.env, MLX_CACHE_MAX_BYTES: String(readManifest("org/tiny")!.totalBytes + 1000) },
        stdout: "pipe",
        stderr: "pipe",
      });
      const [stderr, code] = await Promise.all([new Response(proc.stderr).text(), proc.exited]);
      expect(stderr).toContain(
        "warning: evicted org/tiny (least recently used) to stay under the store's size limit\n",
      );
      expect(code).toBe(0);
      expect((await listModels()).map((m) => m.name)).toEqual(["org/other"]);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a server that pulls a request's model logs the pull's start and end, once each (it logged nothing)",
    async () => {
      await startHub({ "org/tiny": { files: tiny } });
      const logged: string[] = [];
      const server = serve({ logInfo: (message) => logged.push(message) });
      try {
        for (let request = 0; request < 2; request++) {
          const r = await post(`${server.url}/v1/completions`, { model: "hf:org/tiny", prompt: "Hi", max_tokens: 1 });
          expect(r.status).toBe(200);
        }
        // Pulled by the first request; the second found it stored, and said nothing.
        expect(logged).toHaveLength(2);
        expect(logged[0]).toBe("pulling org/tiny from hf:org/tiny");
        expect(logged[1]).toMatch(
          new RegExp(`^pulled org/tiny \\(${formatBytes(readManifest("org/tiny")!.totalBytes)}\\) in \\d+\\.\\d s$`),
        );
        const failed = await post(`${server.url}/v1/completions`, { model: "hf:org/none", prompt: "Hi" });
        expect(failed.status).toBeGreaterThanOrEqual(400);
        expect(logged.slice(2, 3)).toEqual(["pulling org/none from hf:org/none"]);
        expect(logged[3]).toStartWith("pulling org/none failed after ");
        expect(logged).toHaveLength(4);
      } finally {
        await server.stop();
      }
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a server whose request pulled a model says which models the pull evicted, in its log",
    async () => {
      writeTinyModel(join(work, "other"), { seed: 5 });
      await startHub({ "org/tiny": { files: tiny }, "org/other": { files: filesOf(join(work, "other")) } });
      await pull("hf:org/tiny");
      releaseModel("org/tiny"); // pulled by this test process, not in use
      const saved = process.env.MLX_CACHE_MAX_BYTES;
      process.env.MLX_CACHE_MAX_BYTES = String(readManifest("org/tiny")!.totalBytes + 1000);
      const warnings: string[] = [];
      const server = serve({ logWarning: (message) => warnings.push(message) });
      try {
        const r = await post(`${server.url}/v1/completions`, { model: "hf:org/other", prompt: "Hi", max_tokens: 1 });
        expect(r.status).toBe(200);
        expect(warnings).toContain("evicted org/tiny (least recently used) to stay under the store's size limit");
      } finally {
        await server.stop();
        if (saved === undefined) delete process.env.MLX_CACHE_MAX_BYTES;
        else process.env.MLX_CACHE_MAX_BYTES = saved;
      }
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "/api/pull of a model another process is pulling says the stream waits for it, then pulls once it is gone",
    async () => {
      await startHub({ "org/tiny": { files: tiny } });
      // Another process's pull of the model: its lock, held by a live process.
      const holder = Bun.spawn(["sleep", "60"]);
      const lock = join(locksDir(), `pull-${modelKey("org/tiny")}.lock`);
      mkdirSync(locksDir(), { recursive: true });
      symlinkSync(String(holder.pid), lock);
      const server = serve();
      try {
        const response = await fetch(`${server.url}/api/pull`, {
          method: "POST",
          body: JSON.stringify({ model: "hf:org/tiny" }),
        });
        const reader = response.body!.pipeThrough(new TextDecoderStream()).getReader();
        let text = "";
        while (!text.includes("waiting for process")) {
          const { value, done } = await reader.read();
          if (done) break;
          text += value;
        }
        expect(
          text
            .split("\n")
            .slice(0, 2)
            .map((line) => JSON.parse(line).status),
        ).toEqual(["pulling manifest", `waiting for process ${holder.pid}, which is pulling org/tiny`]);
        holder.kill();
        await holder.exited;
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          text += value;
        }
        expect(JSON.parse(text.trim().split("\n").at(-1)!)).toEqual({ status: "success" });
      } finally {
        holder.kill();
        await server.stop();
      }
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "/api/pull whose client goes away while it waits for another process's pull stops waiting",
    async () => {
      await startHub({ "org/tiny": { files: tiny } });
      const holder = Bun.spawn(["sleep", "60"]);
      const lock = join(locksDir(), `pull-${modelKey("org/tiny")}.lock`);
      mkdirSync(locksDir(), { recursive: true });
      symlinkSync(String(holder.pid), lock);
      const logged: string[] = [];
      const server = serve({ logInfo: (message) => logged.push(message) });
      try {
        const client = new AbortController();
        const response = await fetch(`${server.url}/api/pull`, {
          method: "POST",
          body: JSON.stringify({ model: "hf:org/tiny" }),
          signal: client.signal,
        });
        /** A streamed pull's text read on until it holds `said` or ends. */
        const readUntil = async (reader: { read(): Promise<{ value?: string; done: boolean }> }, said: string) => {
          let text = "";
          while (!text.includes(said)) {
            const { value, done } = await reader.read();
            if (done) break;
            text += value;
          }
          return text;
        };
        const waiting = `waiting for process ${holder.pid}`;
        const first = response.body!.pipeThrough(new TextDecoderStream()).getReader();
        expect(await readUntil(first, waiting)).toContain(waiting);
        client.abort();
        // A second pull queues behind the first's wait in this process: it waits on the holder
        // itself only once that wait ended (with the fix, at the abort; left running, only once
        // the holder is gone, when it took the lock and pulled for no one). The holder lives on.
        const again = await fetch(`${server.url}/api/pull`, {
          method: "POST",
          body: JSON.stringify({ model: "hf:org/tiny" }),
        });
        const second = again.body!.pipeThrough(new TextDecoderStream()).getReader();
        expect(await readUntil(second, waiting)).toContain(waiting);
        holder.kill();
        await holder.exited;
        expect(await readUntil(second, '"status":"success"')).toContain('"status":"success"');
        expect(logged.filter((line) => line.startsWith("pulling org/tiny from"))).toHaveLength(1);
      } finally {
        holder.kill();
        await server.stop();
      }
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a mirror whose listing names no commit: a file that changed on its branch since a pull was cut short is fetched anew, not resumed into a mix of both",
    async () => {
      const tokenizer = JSON.parse(new TextDecoder().decode(tiny.get("tokenizer.json")!));
      const before = new TextEncoder().encode(JSON.stringify(tokenizer, null, 2));
      const after = new TextEncoder().encode(JSON.stringify(tokenizer));
      let files = new Map([...tiny, ["tokenizer.json", before]]);
      let version = 1;
      const hub = await commitlessMirror(
        () => files,
        () => version,
      );
      servers = [hub];
      process.env.HF_ENDPOINT = hub.url;
      // Cut short once some of tokenizer.json is on disk.
      const cut = new AbortController();
      let startedAt: number | undefined;
      await expect(
        pullModel(modelRequest("hf:org/tiny"), {
          signal: cut.signal,
          onProgress: (p) => {
            if (p.file !== "tokenizer.json") return;
            startedAt ??= p.received;
            if (p.received > startedAt) cut.abort(new Error("cut short"));
          },
        }),
      ).rejects.toThrow("cut short");
      const staged = readdirSync(join(process.env.MLX_HOME!, "downloads", "hf"));
      expect(staged.filter((name) => name.endsWith(".partial"))).toHaveLength(1);
      files = new Map([...tiny, ["tokenizer.json", after]]);
      version = 2;
      const pulled = await pullModel(modelRequest("hf:org/tiny"));
      expect(new Uint8Array(readFileSync(join(pulled.path, "tokenizer.json")))).toEqual(after);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a revision that climbs out of the store ('../..') is refused: nothing is written outside $MLX_HOME",
    async () => {
      // A mirror whose listing names no commit, serving any revision: the revision as given named
      // the download's staging file, so a request's '@../../..' wrote it beside the store.
      const hub = await commitlessMirror(() => tiny);
      servers = [hub];
      process.env.HF_ENDPOINT = hub.url;
      const outside = join(process.env.MLX_HOME!, "..", "outside-the-store");
      const climbing = `${relative(join(process.env.MLX_HOME!, "downloads", "hf"), outside)}/x`;
      await expect(Promise.resolve().then(() => pull(`hf:org/tiny@${climbing}`))).rejects.toThrow(
        `invalid source: the revision "${climbing}" is not a branch, tag or commit`,
      );
      expect(existsSync(outside)).toBe(false);
      expect(hub.requests).toEqual([]);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a file missing from the revision is named",
    async () => {
      const broken = new Map(sharded);
      broken.delete("model-00002-of-00002.safetensors");
      await startHub({ "org/broken": { files: broken } });
      await expect(pull("hf:org/broken")).rejects.toThrow(
        "hf:org/broken: model.safetensors.index.json names files the repository lacks: model-00002-of-00002.safetensors",
      );
    },
    TEST_TIMEOUT_MS,
  );
});

describe("mlx pull of a stored model whose hub branch moved", () => {
  const A = "a".repeat(40);
  const B = "b".repeat(40);
  // -v: what pull did is logged on a terminal, or with it. The environment as it is at each call:
  // a test sets its hub's endpoint after this is made.
  const cli = (...args: string[]) => cliRunner(process.env.MLX_HOME!)([...args, ...(args[0] === "pull" ? ["-v"] : [])]);
  /** The branch moved to commit B: new weights, its config and tokenizer as they were. */
  const moveBranch = (hub: Awaited<ReturnType<typeof startHub>>) => {
    const repo = hub.repos.get("org/tiny")!;
    repo.sha = B;
    repo.files = new Map([...repo.files, ["model.safetensors", retrainedWeights]]);
  };
  const oldWeights = () => join(process.env.MLX_HOME!, "blobs", `sha256-${sha256Hex(tiny.get("model.safetensors")!)}`);
  const storedWeights = () =>
    readFileSync(join(process.env.MLX_HOME!, "models", modelKey("org/tiny"), "model.safetensors"));
  /**
   * Moves the branch and updates the stored model (not held by this process): its name `dir` is a
   * revision's link again, its weights the new ones, and it loads.
   */
  const expectUpdatedToRevision = async (hub: Awaited<ReturnType<typeof startHub>>, dir: string) => {
    moveBranch(hub);
    await pullModel(modelRequest("hf:org/tiny"), { update: true });
    releaseModel("org/tiny");
    expect(lstatSync(dir).isSymbolicLink()).toBe(true);
    expect(sha256Hex(storedWeights())).toBe(sha256Hex(retrainedWeights));
    load(dir);
  };

  test(
    "is updated to the new commit, fetching only the changed file; up to date says so; offline keeps it",
    async () => {
      const hub = await startHub({ "org/tiny": { files: tiny, sha: A } });
      expect((await cli("pull", "hf:org/tiny")).stderr).toContain("pulled org/tiny (rev aaaaaaa)");
      let asked = hub.requests.length;
      const upToDate = await cli("pull", "hf:org/tiny");
      expect(upToDate.stderr).toContain("org/tiny is up to date (rev aaaaaaa)");
      // One look at the branch's commit, no file asked for.
      expect(paths(hub).slice(asked)).toEqual(["GET /api/models/org/tiny/revision/main"]);

      moveBranch(hub);
      asked = hub.requests.length;
      const updated = await cli("pull", "hf:org/tiny");
      expect(updated.code).toBe(0);
      const size = formatBytes(retrainedWeights.length);
      expect(updated.stderr).toContain(`org/tiny updated aaaaaaa → bbbbbbb: 1 file, ${size}`);
      // The new weights downloaded; config.json and tokenizer.json known unchanged by their git blob ids.
      const downloads = paths(hub)
        .slice(asked)
        .filter((p) => p.startsWith("GET ") && !p.startsWith("GET /api/"));
      expect(downloads).toEqual([`GET /lfs/${sha256Hex(retrainedWeights)}`]);
      expect(readManifest("org/tiny")!.revision).toBe(B);
      expect(sha256Hex(storedWeights())).toBe(sha256Hex(retrainedWeights));
      // No process used the old revision: its weights went with it.
      expect(existsSync(oldWeights())).toBe(false);
      load(await resolveModelPath("org/tiny"));
      releaseModel("org/tiny");

      const list = await cli("list");
      expect(list.stdout).toMatch(/^NAME +FORMAT +QUANTIZATION +SIZE +LAST USED +REVISION$/m);
      expect(list.stdout).toMatch(/^org\/tiny +mlx +.* +bbbbbbb$/m);
      expect((await cli("show", "org/tiny")).stdout).toMatch(/revision +b{40}/);

      process.env.HF_HUB_OFFLINE = "1";
      asked = hub.requests.length;
      const kept = await cli("pull", "hf:org/tiny");
      expect(kept.code).toBe(0);
      expect(kept.stderr).toContain(
        "org/tiny is in the store: kept its stored revision (rev bbbbbbb): HF_HUB_OFFLINE is set, so the hub was not asked",
      );
      expect(hub.requests.length).toBe(asked);
      // A hub out of reach keeps it too, as huggingface_hub falls back to its cache.
      delete process.env.HF_HUB_OFFLINE;
      await Promise.all(servers.map((server) => server.close()));
      servers = [];
      const unreachable = await cli("pull", "hf:org/tiny");
      expect(unreachable.code).toBe(0);
      expect(unreachable.stderr).toContain("kept its stored revision (rev bbbbbbb): cannot reach the Hugging Face hub");
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "pinned to a commit, it never asks the hub again",
    async () => {
      const hub = await startHub({ "org/tiny": { files: tiny, sha: A } });
      expect((await cli("pull", `hf:org/tiny@${A}`)).code).toBe(0);
      moveBranch(hub);
      const asked = hub.requests.length;
      const again = await cli("pull", `hf:org/tiny@${A}`);
      expect(again.stderr).toContain(`org/tiny@${A} is up to date (rev aaaaaaa)`);
      expect(hub.requests.length).toBe(asked);
      expect(readManifest(`org/tiny@${A}`)!.revision).toBe(A);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "an update that fails midway leaves the stored revision whole and usable; the next pull completes it",
    async () => {
      const hub = await startHub({ "org/tiny": { files: tiny, sha: A } });
      await pull("hf:org/tiny");
      releaseModel("org/tiny");
      moveBranch(hub);
      // The new weights arrive wrong (their hash not the one the hub claimed): the update fails after config and tokenizer.
      hub.repos.get("org/tiny")!.lieAbout = "model.safetensors";
      await expect(pullModel(modelRequest("hf:org/tiny"), { update: true })).rejects.toThrow("model.safetensors");
      expect(readManifest("org/tiny")!.revision).toBe(A);
      expect(sha256Hex(storedWeights())).toBe(sha256Hex(tiny.get("model.safetensors")!));
      const path = await openStoredModel("org/tiny");
      load(path!);
      releaseModel("org/tiny");

      delete hub.repos.get("org/tiny")!.lieAbout;
      const updated = await pullModel(modelRequest("hf:org/tiny"), { update: true });
      expect(updated.updated).toEqual({ from: A, files: 1, bytes: retrainedWeights.length });
      expect(sha256Hex(storedWeights())).toBe(sha256Hex(retrainedWeights));
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a process reading the model while its branch moves many times never finds it missing, nor reads two revisions at once; the old revisions go once it stops",
    async () => {
      /** Revision i: its config and generation config both say i, its commit is i in hex. */
      const revision = (i: number) => {
        const files = new Map(tiny);
        const config = JSON.parse(new TextDecoder().decode(tiny.get("config.json")!));
        files.set("config.json", new TextEncoder().encode(JSON.stringify({ ...config, qa_revision: i })));
        files.set("generation_config.json", new TextEncoder().encode(JSON.stringify({ qa_revision: i })));
        return { sha: i.toString(16).padStart(40, "0"), files };
      };
      const hub = await startHub({ "org/tiny": revision(0) });
      await pull("hf:org/tiny");
      releaseModel("org/tiny");
      const home = process.env.MLX_HOME!;
      const { reader, stop } = await revisionReader(join(home, "models", modelKey("org/tiny")));
      try {
        const UPDATES = 40;
        for (let i = 1; i <= UPDATES; i++) {
          Object.assign(hub.repos.get("org/tiny")!, revision(i));
          const updated = await pullModel(modelRequest("hf:org/tiny"), { update: true });
          expect(updated.updated?.files).toBe(2);
        }
        stop();
        const seen = JSON.parse(await new Response(reader.stdout).text());
        expect(await reader.exited).toBe(0);
        expect({ missing: seen.missing, mixed: seen.mixed }).toEqual({ missing: 0, mixed: 0 });
        // It read while the updates ran: it saw more than the first and last revisions.
        expect(seen.revisions).toBeGreaterThan(2);
      } finally {
        reader.kill();
        await reader.exited;
      }
      // The reader gone, the next update leaves only the current revision. This process loaded
      // none of them: it lets go of the mark its pulls took (else it would be using the model too).
      releaseModel("org/tiny");
      Object.assign(hub.repos.get("org/tiny")!, revision(41));
      await pullModel(modelRequest("hf:org/tiny"), { update: true });
      releaseModel("org/tiny");
      expect(readdirSync(join(home, "revisions", modelKey("org/tiny")))).toHaveLength(1);
      expect(
        JSON.parse(readFileSync(join(home, "models", modelKey("org/tiny"), "config.json"), "utf8")).qa_revision,
      ).toBe(41);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a store made before revisions (the model a directory of links) is read as it is, and moved to them by its update",
    async () => {
      const hub = await startHub({ "org/tiny": { files: tiny, sha: A } });
      await pull("hf:org/tiny");
      releaseModel("org/tiny");
      const home = process.env.MLX_HOME!;
      const dir = join(home, "models", modelKey("org/tiny"));
      rmSync(join(home, "revisions"), { recursive: true });
      linkAsOlderMlx(dir, "org/tiny");
      expect(await openStoredModel("org/tiny")).toBe(dir);
      expect(lstatSync(dir).isDirectory()).toBe(true);
      load(dir);
      releaseModel("org/tiny");
      await expectUpdatedToRevision(hub, dir);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "an older mlx that links the model's name as a directory again: the revision a process reads stays until it stops, then goes whole; reads, updates and rm lose nothing",
    async () => {
      const hub = await startHub({ "org/tiny": { files: tiny, sha: A } });
      await pull("hf:org/tiny");
      releaseModel("org/tiny");
      const home = process.env.MLX_HOME!;
      const dir = join(home, "models", modelKey("org/tiny"));
      const revisions = join(home, "revisions", modelKey("org/tiny"));
      // A process using the model (it marks it in use and reads it through its name).
      const { reader, stop } = await revisionReader(dir);
      try {
        // An mlx from before revisions opens it: the links it finds are not its own (one folder
        // deeper), so it links the name as a directory of its own, as it always did.
        linkAsOlderMlx(dir, "org/tiny");
        expect(await openStoredModel("org/tiny")).toBe(dir);
        releaseModel("org/tiny");
        expect(lstatSync(dir).isDirectory()).toBe(true);
        // The revision the process may read stays, and nothing it links is taken.
        expect((await verifyStore()).leftovers).toEqual({ files: 0, bytes: 0 });
        expect(readdirSync(revisions)).toHaveLength(1);
        stop();
        expect(await reader.exited).toBe(0);
      } finally {
        reader.kill();
        await reader.exited;
      }
      // Stopped: its revision goes, folder and all; the model's files stay.
      const report = await verifyStore();
      expect(report).toMatchObject({ leftovers: { files: 0, bytes: 0 }, damagedModels: [] });
      expect(existsSync(revisions)).toBe(false);
      load(dir);
      // Its update moves it to revisions again, the old weights gone with it.
      await expectUpdatedToRevision(hub, dir);
      expect(existsSync(oldWeights())).toBe(false);
      // Removed, nothing of it is left.
      expect((await cli("rm", "-y", "org/tiny")).code).toBe(0);
      expect([existsSync(dir), existsSync(revisions)]).toEqual([false, false]);
      expect(readdirSync(join(home, "blobs"))).toEqual([]);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "/api/pull of a stored model updates it as mlx pull does, saying so in its status lines; up to date, it fetches nothing",
    async () => {
      const hub = await startHub({ "org/tiny": { files: tiny, sha: A } });
      await pull("hf:org/tiny");
      releaseModel("org/tiny");
      const server = serve();
      const statuses = async (model: string) => {
        const response = await fetch(`${server.url}/api/pull`, { method: "POST", body: JSON.stringify({ model }) });
        expect(response.status).toBe(200);
        return (await response.text())
          .trim()
          .split("\n")
          .map((line) => JSON.parse(line).status);
      };
      const ask = () => post(`${server.url}/v1/completions`, { model: "org/tiny", prompt: "Hi", max_tokens: 2 });
      try {
        // The server has the model loaded as it pulls its update: it keeps answering.
        expect((await ask()).status).toBe(200);
        moveBranch(hub);
        const updated = await statuses("org/tiny");
        expect(updated).toContain(
          `org/tiny updated aaaaaaa → bbbbbbb: 1 file, ${formatBytes(retrainedWeights.length)}`,
        );
        expect(updated.at(-1)).toBe("success");
        expect(readManifest("org/tiny")!.revision).toBe(B);
        expect(sha256Hex(storedWeights())).toBe(sha256Hex(retrainedWeights));
        // Asked again: one look at the branch, no file fetched.
        const asked = hub.requests.length;
        expect((await statuses("org/tiny")).at(-1)).toBe("success");
        expect(paths(hub).slice(asked)).toEqual(["GET /api/models/org/tiny/revision/main"]);
        for (let i = 0; i < 3; i++) expect((await ask()).status).toBe(200);
      } finally {
        await server.stop();
      }
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a server that pulls an update of the model it has loaded keeps that model's revision until it unloads it; then it goes",
    async () => {
      const hub = await startHub({ "org/tiny": { files: tiny, sha: A } });
      await pull("hf:org/tiny");
      releaseModel("org/tiny");
      const revisions = join(process.env.MLX_HOME!, "revisions", modelKey("org/tiny"));
      const server = serve();
      const ask = () => post(`${server.url}/v1/completions`, { model: "org/tiny", prompt: "Hi", max_tokens: 2 });
      const loadedNames = async () =>
        ((await (await fetch(`${server.url}/api/ps`)).json()) as { models: { name: string }[] }).models.length;
      try {
        expect((await ask()).status).toBe(200);
        moveBranch(hub);
        expect((await post(`${server.url}/api/pull`, { model: "org/tiny", stream: false })).status).toBe(200);
        expect(readManifest("org/tiny")!.revision).toBe(B);
        // The revision its loaded model was read from, and the weights it links, stay: the server
        // reads them again (a reload), as it would had another process pulled the update.
        expect(readdirSync(revisions)).toHaveLength(2);
        expect(existsSync(oldWeights())).toBe(true);
        // mlx verify, another process, leaves them to the server too.
        expect((await cli("verify")).code).toBe(0);
        expect(readdirSync(revisions)).toHaveLength(2);
        expect(existsSync(oldWeights())).toBe(true);
        expect((await ask()).status).toBe(200);
        // Unloaded, the server uses them no longer: the old revision and its weights go.
        expect((await post(`${server.url}/api/generate`, { model: "org/tiny", keep_alive: 0 })).status).toBe(200);
        await eventually(async () => (await loadedNames()) === 0, 10_000);
        // Behind whatever store work the unload queued in this process.
        await listModels();
        expect(readdirSync(revisions)).toHaveLength(1);
        expect(existsSync(oldWeights())).toBe(false);
        // The next load reads the new revision.
        expect((await ask()).status).toBe(200);
      } finally {
        await server.stop();
      }
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a server that loaded the old revision keeps answering, its files kept until it stops",
    async () => {
      const hub = await startHub({ "org/tiny": { files: tiny, sha: A } });
      await pull("hf:org/tiny");
      releaseModel("org/tiny");
      const asked = hub.requests.length;
      const { proc, url } = await startServe("hf:org/tiny");
      try {
        // Serving a stored model asks nothing of the hub.
        expect(hub.requests.length).toBe(asked);
        const ask = () => post(`${url}/v1/completions`, { model: "hf:org/tiny", prompt: "Hi", max_tokens: 2 });
        expect((await ask()).status).toBe(200);
        moveBranch(hub);
        const updated = await pullModel(modelRequest("hf:org/tiny"), { update: true });
        releaseModel("org/tiny");
        expect(updated.updated?.from).toBe(A);
        expect(readManifest("org/tiny")!.revision).toBe(B);
        // The server's revision's weights are still on disk, and it answers as before.
        expect(existsSync(oldWeights())).toBe(true);
        for (let i = 0; i < 3; i++) expect((await ask()).status).toBe(200);
        // mlx verify leaves them, and the revision that links them, to the server, which may read them again.
        const revisions = join(process.env.MLX_HOME!, "revisions", modelKey("org/tiny"));
        expect((await verifyStore()).leftovers).toEqual({ files: 0, bytes: 0 });
        expect(existsSync(oldWeights())).toBe(true);
        expect(readdirSync(revisions)).toHaveLength(2);
        expect((await ask()).status).toBe(200);
      } finally {
        proc.kill();
        await proc.exited;
      }
      // Stopped, it uses them no longer: verify removes both.
      const report = await verifyStore();
      expect(report.leftovers).toEqual({ files: 1, bytes: tiny.get("model.safetensors")!.length });
      expect(existsSync(oldWeights())).toBe(false);
      expect(readdirSync(join(process.env.MLX_HOME!, "revisions", modelKey("org/tiny")))).toHaveLength(1);
    },
    TEST_TIMEOUT_MS,
  );
});
