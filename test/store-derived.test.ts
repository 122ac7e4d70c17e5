// Prepared artifacts: converting the default model's GGUF into the store once, and finding
// the conversion again by the hash of its inputs. Needs the default model (fetched into the
// store on first use, like the parity test).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import {
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
import { join } from "node:path";
import { loadModel, type LoadedModel } from "../src/models/load";
import { CONVERTER_VERSION, convertedModel } from "../src/store/derived";
import { markInUse, releaseModel } from "../src/store/in-use";
import { readManifest } from "../src/store/manifest";
import { blobPath } from "../src/store/paths";
import { resolveModelPath } from "../src/store/resolve";
import { cliRunner } from "./helpers/cli";
import { writeTinyModel } from "./helpers/tiny-model";

const main = join(import.meta.dir, "..", "src", "main.ts");
const savedHome = process.env.MLX_HOME;
let work: string;
let gguf: string;
// Kept referenced: a LoadedModel reached by the garbage collector crashes Bun today.
const loaded: LoadedModel[] = [];

beforeAll(async () => {
  gguf = await resolveModelPath(undefined);
  work = mkdtempSync(join(tmpdir(), "mlx-derived-"));
  process.env.MLX_HOME = join(work, "home");
});

/** A model's manifest in the store at `home` (not this process's MLX_HOME). */
function readManifestIn(home: string, name: string) {
  const saved = process.env.MLX_HOME;
  process.env.MLX_HOME = home;
  try {
    return readManifest(name)!;
  } finally {
    process.env.MLX_HOME = saved;
  }
}

afterAll(() => {
  process.env.MLX_HOME = savedHome;
  rmSync(work, { recursive: true, force: true });
});

describe("convert into the store", () => {
  test("the first conversion does the work; the same input again is a lookup, under any name", async () => {
    const first = await convertedModel(gguf, "smol-mlx");
    expect(first.converted).toBe(true);
    expect(lstatSync(join(first.path, "model.safetensors")).isSymbolicLink()).toBe(true);
    const manifest = readManifest("smol-mlx")!;
    expect(manifest).toMatchObject({ format: "mlx", architecture: "llama", quantization: "4-bit, group 32" });
    expect(manifest.source).toMatch(/^convert:sha256-[0-9a-f]{64}$/);
    expect(manifest.derivedKey).toMatch(/^[0-9a-f]{64}$/);
    expect(CONVERTER_VERSION).toMatch(/^[0-9a-f]{16}$/);

    // The same bytes reached through another path (a symlink outside the store) are recognised by
    // hash: a lookup (converted: false), however long hashing 98 MB takes on a busy machine.
    const elsewhere = join(work, "copy.gguf");
    symlinkSync(gguf, elsewhere);
    const second = await convertedModel(elsewhere, "other-name");
    expect(second).toEqual({ path: first.path, name: "smol-mlx", converted: false, evicted: [] });

    const lm = loadModel(second.path);
    loaded.push(lm);
    expect(lm.format).toBe("mlx");
    expect(readdirSync(join(process.env.MLX_HOME!, "tmp"))).toEqual([]);
  }, 120_000);

  test("mlx convert <gguf> with no directory prints the stored directory", async () => {
    const proc = Bun.spawn([process.execPath, main, "convert", gguf], {
      env: { ...process.env },
      stdout: "pipe",
      stderr: "pipe",
    });
    const [stdout, code] = await Promise.all([new Response(proc.stdout).text(), proc.exited]);
    expect(code).toBe(0);
    expect(stdout).toBe(`${join(process.env.MLX_HOME!, "models", "smol-mlx")}\n`);
  }, 120_000);

  test("a damaged conversion names the command that makes it again (mlx pull cannot)", async () => {
    mkdirSync(process.env.MLX_HOME!, { recursive: true });
    writeFileSync(join(process.env.MLX_HOME!, "models.toml"), `[models.smol]\nsource = ${JSON.stringify(gguf)}\n`);
    const mlx = cliRunner(process.env.MLX_HOME!);
    const converted = await mlx(["convert", "smol"]);
    expect(converted.code).toBe(0);
    // Pulled by name while intact, it is there.
    expect(await mlx(["pull", "smol-mlx"])).toMatchObject({ code: 0, stdout: converted.stdout });
    const config = readManifest("smol-mlx")!.files.find((f) => f.name === "config.json")!;
    writeFileSync(blobPath(config.sha256), "short");

    const verify = await mlx(["verify"]);
    expect(verify.code).toBe(1);
    expect(verify.stdout).toEndWith("\nneeds a new conversion: mlx convert smol\n");
    expect((await mlx(["show", "smol-mlx"])).stdout).toMatch(/^file config\.json .* missing: mlx convert smol$/m);
    expect(await mlx(["pull", "smol-mlx"])).toMatchObject({
      code: 1,
      stderr: "error: 'smol-mlx' was made here, not pulled; run `mlx convert smol` to make it again\n",
    });
    await expect(resolveModelPath("smol-mlx")).rejects.toThrow(
      /config\.json .* is missing or truncated; run `mlx convert smol` to store it again/,
    );
    // The command it names repairs it.
    expect((await mlx(["convert", "smol"])).code).toBe(0);
    expect(await mlx(["verify"])).toMatchObject({
      code: 0,
      stdout: expect.stringContaining("all stored models are intact"),
    });
  }, 120_000);
  test("a model named org/repo converts as org/repo-mlx, as --help says: two orgs' models of one repo name are two conversions", async () => {
    const home = join(work, "home-orgs");
    mkdirSync(home, { recursive: true });
    // The same model from another org: other bytes (a byte past the tensors), so a conversion of its own.
    const other = join(work, "other.gguf");
    writeFileSync(other, Buffer.concat([readFileSync(gguf), Buffer.from([0])]));
    writeFileSync(
      join(home, "models.toml"),
      `[models."a/smol"]\nsource = ${JSON.stringify(gguf)}\n[models."b/smol"]\nsource = ${JSON.stringify(other)}\n`,
    );
    const mlx = cliRunner(home);
    for (const org of ["a", "b"]) {
      const converted = await mlx(["convert", `${org}/smol`]);
      expect(converted).toMatchObject({ code: 0, stdout: `${join(home, "models", `${org}%2Fsmol-mlx`)}\n` });
    }
    // The first conversion is still there: the second did not take its name.
    expect((await mlx(["list"])).stdout).toMatch(/^a\/smol-mlx +mlx .*\nb\/smol-mlx +mlx /m);
  }, 120_000);

  test("two GGUF files of one name in two folders: the second is refused, not converted over the first; the same file again replaces its own", async () => {
    const home = join(work, "home-folders");
    const mlx = cliRunner(home);
    for (const folder of ["a", "b"]) mkdirSync(join(work, folder), { recursive: true });
    symlinkSync(gguf, join(work, "a", "model.gguf"));
    // Other bytes (a byte past the tensors): a conversion of its own.
    writeFileSync(join(work, "b", "model.gguf"), Buffer.concat([readFileSync(gguf), Buffer.from([1])]));
    const first = await mlx(["convert", join(work, "a", "model.gguf")]);
    expect(first.code).toBe(0);
    const made = readManifestIn(home, "model-mlx");

    const second = await mlx(["convert", join(work, "b", "model.gguf")]);
    expect(second).toMatchObject({
      code: 1,
      stderr: `error: 'model-mlx' is the conversion of ${join(work, "a", "model.gguf")}; convert ${join(work, "b", "model.gguf")} into a directory instead (mlx convert ${join(work, "b", "model.gguf")} DIR), or remove that one first (mlx rm model-mlx)\n`,
    });
    expect(readManifestIn(home, "model-mlx")).toEqual(made);
    // The same file, changed since, is converted again under its name (the link replaced, never what it points at: the store's model).
    rmSync(join(work, "a", "model.gguf"));
    writeFileSync(join(work, "a", "model.gguf"), Buffer.concat([readFileSync(gguf), Buffer.from([2])]));
    expect((await mlx(["convert", join(work, "a", "model.gguf")])).code).toBe(0);
    expect(readManifestIn(home, "model-mlx").derivedKey).not.toBe(made.derivedKey);
  }, 120_000);

  test("a conversion whose input changed is refused while another process uses the one it would replace, before converting", async () => {
    const home = join(work, "home-in-use");
    const mlx = cliRunner(home);
    const input = join(work, "in-use", "model.gguf");
    mkdirSync(join(work, "in-use"), { recursive: true });
    writeFileSync(input, Buffer.concat([readFileSync(gguf), Buffer.from([3])]));
    expect((await mlx(["convert", input])).code).toBe(0);
    const made = readManifestIn(home, "model-mlx");
    // This process (a server, say) uses it; the file is changed since.
    const inHome = (use: () => void) => {
      const saved = process.env.MLX_HOME;
      process.env.MLX_HOME = home;
      try {
        use();
      } finally {
        process.env.MLX_HOME = saved;
      }
    };
    inHome(() => markInUse("model-mlx"));
    writeFileSync(input, Buffer.concat([readFileSync(gguf), Buffer.from([4])]));
    const refused = await mlx(["convert", input]);
    inHome(() => releaseModel("model-mlx"));
    expect(refused).toMatchObject({
      code: 1,
      stderr: `error: cannot replace 'model-mlx' (stored from ${made.source}) while process ${process.pid} is using it; stop it first\n`,
    });
    expect(readManifestIn(home, "model-mlx")).toEqual(made);
    expect((await mlx(["convert", input])).code).toBe(0);
    expect(readManifestIn(home, "model-mlx").derivedKey).not.toBe(made.derivedKey);
  }, 120_000);

  test("a conversion that makes the store evict a model says so, as mlx pull does (it was silent)", async () => {
    const home = join(work, "home-evicting");
    const tiny = join(work, "tiny");
    writeTinyModel(tiny);
    // Room for the conversion (102 MB), not for it and the tiny model (14 MB) both.
    const mlx = cliRunner(home, { MLX_CACHE_MAX_BYTES: "110MB" });
    expect((await mlx(["pull", tiny])).code).toBe(0);
    const converted = await mlx(["convert", gguf]);
    expect(converted.code).toBe(0);
    expect(converted.stderr).toContain("evicted tiny (least recently used) to stay under the store's size limit");
    expect((await mlx(["list"])).stdout).not.toMatch(/^tiny /m);
  }, 120_000);
});
