// `mlx convert` refusing what it must not do: an output directory whose replacement would delete
// its own input or part of the store, options it cannot honour, and a repair hint only where
// the stored model's own file failed to read. A tiny GGUF stands in for a model: every refusal
// here comes before (or instead of) a real conversion.
import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import {
  copyFileSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
  writeSync,
  closeSync,
  existsSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { cliRunner, interruptWhileInUse, mainScript } from "./helpers/cli";
import { tinyLlamaGGUF, writeGGUF, type GGUFTensor } from "./helpers/gguf-writer";

const TEST_TIMEOUT_MS = 30_000;
const fixture = join(import.meta.dir, "fixtures", "gguf-quants.gguf");
// Where the default model is stored (the test suite fetches it once).
const sharedHome = process.env.MLX_HOME ?? join(import.meta.dir, "..", ".cache", "mlx-home");

let work: string;
let home: string;
let mlx: ReturnType<typeof cliRunner>;

beforeEach(() => {
  work = mkdtempSync(join(tmpdir(), "mlx-convert-"));
  home = join(work, "home");
  mlx = cliRunner(home);
});

afterEach(() => rmSync(work, { recursive: true, force: true }));

/** The fixture stored as the model `quants` (a symlinked blob, as a pulled GGUF is). */
async function storedModel(): Promise<void> {
  const file = join(work, "quants.gguf");
  copyFileSync(fixture, file);
  expect((await mlx(["pull", file])).code).toBe(0);
}

/** The default model's GGUF file in the shared store. */
function defaultGGUF(): string {
  const models = join(sharedHome, "models", "smollm2");
  return join(models, readdirSync(models).find((f) => f.endsWith(".gguf"))!);
}

const errorLines = (stderr: string) => stderr.trim().split("\n");

describe("mlx convert <gguf> <dir>", () => {
  test(
    "--bits on an F16 GGUF quantizes its matrices, as mlx_lm.convert -q; by default they stay 16-bit",
    async () => {
      const gguf = join(work, "f16.gguf");
      const { metadata, tensors } = tinyLlamaGGUF({
        hidden: 64,
        heads: 4,
        kvHeads: 2,
        ffn: 128,
        layers: 2,
        type: "F16",
      });
      writeGGUF(gguf, metadata, tensors);
      const config = (dir: string) => JSON.parse(readFileSync(join(dir, "config.json"), "utf8"));
      const [plain, four] = [join(work, "plain"), join(work, "four")];
      expect((await mlx(["convert", gguf, plain])).code).toBe(0);
      expect(config(plain).quantization).toBeUndefined();
      const converted = await mlx(["convert", gguf, four, "--bits", "4"]);
      expect([converted.code, converted.stderr]).toMatchObject([0, expect.any(String)]);
      expect(config(four).quantization).toMatchObject({ bits: 4, group_size: 64 });
      for (const dir of [plain, four]) {
        const answer = await mlx(["run", "-m", dir, "--max-tokens", "3", "--json", "Hi"]);
        expect([dir, answer.code, JSON.parse(answer.stdout).token_ids.length]).toEqual([dir, 0, 3]);
      }
    },
    TEST_TIMEOUT_MS * 2,
  );

  test(
    "a GGUF that does not load (a tensor missing, one of the wrong shape) is refused: no directory, nothing stored",
    async () => {
      // Converted without a word, it became a directory (or a stored model) that failed at every load.
      const shape = { hidden: 64, heads: 4, kvHeads: 2, ffn: 128, layers: 2, type: "F32" } as const;
      const broken: [string, (tensors: GGUFTensor[]) => GGUFTensor[], string][] = [
        [
          "missing",
          (tensors) => tensors.filter((t) => t.name !== "blk.1.ffn_up.weight"),
          "cannot load the conversion: weight 'model.layers.1.mlp.up_proj.weight' is missing from the model files",
        ],
        [
          "misshapen",
          (tensors) =>
            tensors.map((t) =>
              t.name === "blk.0.attn_v.weight" ? { ...t, dims: [64, 16], values: t.values.subarray(0, 64 * 16) } : t,
            ),
          "config.json does not match the weights: tensor model.layers.0.self_attn.v_proj.weight has shape [16,64], but num_key_value_heads × head_dim (2 × 16) is 32",
        ],
      ];
      for (const [name, change, reason] of broken) {
        const gguf = join(work, `${name}.gguf`);
        const { metadata, tensors } = tinyLlamaGGUF(shape);
        writeGGUF(gguf, metadata, change(tensors));
        const message = `error: ${gguf} does not convert into a model that loads: ${reason}`;
        const out = join(work, `${name}-out`);
        const intoDirectory = await mlx(["convert", gguf, out]);
        expect([intoDirectory.code, errorLines(intoDirectory.stderr)]).toEqual([1, [message]]);
        const intoStore = await mlx(["convert", gguf]);
        expect([intoStore.code, errorLines(intoStore.stderr)]).toEqual([1, [message]]);
      }
      expect(readdirSync(work).filter((f) => !f.endsWith(".gguf") && f !== "home")).toEqual([]);
      expect((await mlx(["list", "--json"])).stdout.trim()).toBe("[]");
    },
    TEST_TIMEOUT_MS * 2,
  );

  test(
    "a GGUF of an architecture we do not run is refused naming the file, as mlx run names it",
    async () => {
      const gguf = join(work, "phi.gguf");
      const { metadata, tensors } = tinyLlamaGGUF({
        hidden: 64,
        heads: 4,
        kvHeads: 2,
        ffn: 128,
        layers: 1,
        type: "F32",
      });
      const renamed = Object.fromEntries(
        Object.entries(metadata).map(([k, v]) => [
          k.replace(/^llama\./, "phi2."),
          k === "general.architecture" ? "phi2" : v,
        ]),
      );
      writeGGUF(gguf, renamed, tensors);
      const converted = await mlx(["convert", gguf, join(work, "phi-out")]);
      expect(converted.code).toBe(1);
      expect(errorLines(converted.stderr)).toEqual([
        expect.stringMatching(new RegExp(`^error: cannot load ${gguf}: unsupported GGUF architecture 'phi2'`)),
      ]);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "refuses an output directory that holds the source, or is it, and deletes nothing",
    async () => {
      const dir = join(work, "d");
      mkdirSync(dir);
      const source = join(dir, "m.gguf");
      copyFileSync(fixture, source);
      for (const output of [dir, source, work]) {
        const { code, stderr } = await mlx(["convert", source, output, "--force"]);
        expect(code).toBe(1);
        expect(errorLines(stderr)).toEqual([
          `error: output directory ${output} would replace the source ${source}; choose another directory`,
        ]);
      }
      expect(readdirSync(dir)).toEqual(["m.gguf"]);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "refuses an output directory inside the store (or holding it), and the store stays as it was",
    async () => {
      await storedModel();
      const blobs = readdirSync(join(home, "blobs"));
      for (const output of [join(home, "blobs"), join(home, "models"), join(home, "new"), home]) {
        const { code, stderr } = await mlx(["convert", "quants", output, "--force"]);
        expect(code).toBe(1);
        expect(errorLines(stderr)).toHaveLength(1);
        expect(stderr).toMatch(/^error: output directory .* (would replace the source|overlaps the model store)/);
      }
      expect(readdirSync(join(home, "blobs"))).toEqual(blobs);
      expect(readdirSync(join(home, "models", "quants"))).toEqual(["quants.gguf"]);
      expect(readdirSync(home)).not.toContain("new");
      expect((await mlx(["verify"])).code).toBe(0);
    },
    TEST_TIMEOUT_MS,
  );
});

describe("mlx convert --force", () => {
  test(
    "replaces an earlier conversion, never a directory that holds no model (., a project)",
    async () => {
      const project = join(work, "project");
      mkdirSync(join(project, "src"), { recursive: true });
      writeFileSync(join(project, "src", "main.c"), "int main;");
      writeFileSync(join(project, "notes.md"), "mine");
      const refused = await mlx(["convert", defaultGGUF(), project, "--force"]);
      expect(refused.code).toBe(1);
      expect(errorLines(refused.stderr)).toEqual([
        `error: ${project} is not a model directory (no config.json and .safetensors): --force replaces only an earlier conversion; choose another directory`,
      ]);
      expect(readdirSync(project).sort()).toEqual(["notes.md", "src"]);
      expect(readFileSync(join(project, "src", "main.c"), "utf8")).toBe("int main;");

      const earlier = join(work, "earlier");
      mkdirSync(earlier);
      writeFileSync(join(earlier, "config.json"), "{}");
      writeFileSync(join(earlier, "model.safetensors"), "stale");
      const replaced = await mlx(["convert", defaultGGUF(), earlier, "--force"]);
      expect(replaced.code).toBe(0);
      expect(readdirSync(earlier).sort()).toEqual([
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
      ]);
    },
    TEST_TIMEOUT_MS,
  );
});

describe("mlx convert errors", () => {
  test(
    "an option or an output it cannot use is its own error, with no word of damage",
    async () => {
      await storedModel();
      const full = join(work, "full");
      mkdirSync(full);
      writeFileSync(join(full, "keep"), "");
      const file = join(full, "keep");
      const cases: [string[], string][] = [
        [[full], `error: ${full} exists and is not empty (use --force to replace it)`],
        [["", "--force"], "error: the output directory is empty; give one, or leave it out to convert into the store"],
        [[file, "--force"], `error: ${file} exists and is not a directory`],
        [[join(work, "out"), "--bits", "abc"], "error: --bits must be a whole number ≥ 0 (got 'abc')"],
        [
          [join(work, "out"), "--bits", "7"],
          "error: --bits must be 2, 3, 4, 5, 6 or 8 (or 0 to keep 16-bit weights) (got 7)",
        ],
        [[join(work, "out"), "--group-size", "7"], "error: --group-size must be 32, 64 or 128 (got 7)"],
      ];
      for (const [args, line] of cases) {
        const { code, stderr } = await mlx(["convert", "quants", ...args]);
        expect(code).toBe(1);
        expect(errorLines(stderr)).toEqual([line]);
      }
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "into the store, --bits and --group-size are checked and refused rather than ignored",
    async () => {
      await storedModel();
      const cases: [string[], string][] = [
        [["--bits", "abc"], "error: --bits must be a whole number ≥ 0 (got 'abc')"],
        [["--group-size", "x"], "error: --group-size must be a whole number > 0 (got 'x')"],
        [
          ["--bits", "8"],
          "error: --bits and --group-size need an output directory: a conversion into the store keeps the default quantization",
        ],
        [
          ["--group-size", "32"],
          "error: --bits and --group-size need an output directory: a conversion into the store keeps the default quantization",
        ],
      ];
      for (const [args, line] of cases) {
        const { code, stderr } = await mlx(["convert", "quants", ...args]);
        expect(code).toBe(1);
        expect(errorLines(stderr)).toEqual([line]);
      }
      expect(readdirSync(join(home, "manifests"))).toEqual(["quants.json"]);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "an output it cannot write is one line naming it, not its staging folder",
    async () => {
      const file = join(work, "file");
      writeFileSync(file, "");
      for (const output of [join(file, "out"), join(file, "sub", "out")]) {
        const { code, stderr } = await mlx(["convert", defaultGGUF(), output]);
        expect(code).toBe(1);
        expect(errorLines(stderr)).toEqual([`error: cannot write ${output}: a folder on its path is a file`]);
      }
    },
    TEST_TIMEOUT_MS,
  );

  // A real full disk: a small tmpfs mounted in a user namespace (where the system allows one).
  test.skipIf(Bun.spawnSync(["unshare", "-rm", "true"], { stderr: "ignore" }).exitCode !== 0)(
    "a disk without room is one line (bytes needed, bytes free, where) before anything is written; nothing is left on it",
    async () => {
      const disk = join(work, "disk");
      mkdirSync(disk);
      const mlxCommand = `${JSON.stringify(process.execPath)} ${JSON.stringify(mainScript)}`;
      const script = `
        mount -t tmpfs -o size=2m tmpfs ${disk} || exit 9
        ${mlxCommand} convert ${defaultGGUF()} ${disk}/out; echo "dir: $?"
        MLX_HOME=${disk}/home ${mlxCommand} convert ${defaultGGUF()}; echo "store: $?"
        MLX_HOME=${disk}/home ${mlxCommand} pull ${defaultGGUF()}; echo "pull: $?"
        ls ${disk}; ls -A ${disk}/home/tmp; ls -A ${disk}/home/blobs 2>/dev/null; ls ${disk}/home/manifests/*.json 2>/dev/null | wc -l`;
      const proc = Bun.spawn(["unshare", "-rm", "sh", "-c", script], {
        env: { ...process.env, MLX_HOME: home, NO_COLOR: "1" },
        stdout: "pipe",
        stderr: "pipe",
      });
      const [stdout, stderr] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text()]);
      expect(await proc.exited).toBe(0);
      const room = (where: string, what: string) =>
        new RegExp(`^error: not enough disk space in ${where} for ${what}: about \\d+ MB needed, [0-3] MB free$`);
      const [dir, store, pull, ...rest] = errorLines(stderr);
      expect(rest).toEqual([]);
      expect(dir).toMatch(room(disk, `the conversion of ${defaultGGUF()}`));
      expect(store).toMatch(room(`${disk}/home/tmp`, `the conversion of ${defaultGGUF()}`));
      expect(pull).toMatch(room(`${disk}/home`, defaultGGUF()));
      // Only the store's folders: no output, staging folder, temporary file or blob, no manifest.
      expect(stdout).toBe("dir: 1\nstore: 1\npull: 1\nhome\n0\n");
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a file size limit (ulimit -f) is one line naming the output directory, not its staging folder",
    async () => {
      const out = join(work, "out");
      const script = `ulimit -f 1000 && exec ${JSON.stringify(process.execPath)} ${JSON.stringify(mainScript)} convert ${defaultGGUF()} ${out}`;
      const proc = Bun.spawn(["sh", "-c", script], {
        env: { ...process.env, MLX_HOME: home, NO_COLOR: "1" },
        stdout: "pipe",
        stderr: "pipe",
      });
      const stderr = await new Response(proc.stderr).text();
      expect(await proc.exited).toBe(1);
      expect(errorLines(stderr)).toHaveLength(1);
      expect(stderr).toStartWith(`error: cannot write ${out}: `);
      expect(readdirSync(work).filter((name) => name.startsWith("out"))).toEqual([]);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "into the store, never over a model of that name that was pulled",
    async () => {
      // The default model (a real GGUF), converted once into a directory that is then pulled under
      // the name a conversion into the store takes.
      const gguf = defaultGGUF();
      const name = `${basename(gguf, ".gguf")}-mlx`;
      const pulled = join(work, name);
      expect((await mlx(["convert", gguf, pulled])).code).toBe(0);
      expect((await mlx(["pull", pulled])).code).toBe(0);
      const manifest = () => readFileSync(join(home, "manifests", `${name}.json`), "utf8");
      const before = manifest();
      const { code, stderr } = await mlx(["convert", gguf]);
      expect(code).toBe(1);
      expect(errorLines(stderr)).toEqual([
        `error: '${name}' is already a stored model (${pulled}); convert into a directory instead (mlx convert ${gguf} DIR), or remove that one first (mlx rm ${name})`,
      ]);
      expect(manifest()).toBe(before);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a stored GGUF that cannot be read is named, with how to repair it",
    async () => {
      await storedModel();
      const [blob] = readdirSync(join(home, "blobs"));
      // Same size (so the store sees it present), a header no GGUF has.
      const fd = openSync(join(home, "blobs", blob!), "r+");
      writeSync(fd, Buffer.from([0xff, 0xff, 0xff, 0x7f]), 0, 4, 4);
      closeSync(fd);
      const { code, stderr } = await mlx(["convert", "quants", join(work, "out")]);
      expect(code).toBe(1);
      expect(errorLines(stderr)).toHaveLength(1);
      expect(stderr).toStartWith(`error: cannot load ${join(home, "models", "quants", "quants.gguf")}: `);
      expect(stderr).toEndWith(
        "; stored model 'quants' may be damaged: run `mlx verify`, then run `mlx pull quants`\n",
      );
    },
    TEST_TIMEOUT_MS,
  );
});

describe("mlx convert interrupted", () => {
  test(
    "Ctrl-C stops the conversion before anything is written: exit 130, no output, the in-use marker gone",
    async () => {
      const out = join(work, "out");
      const proc = Bun.spawn([process.execPath, mainScript, "convert", "smollm2", out], {
        env: { ...process.env, MLX_HOME: sharedHome, NO_COLOR: "1" },
        stdout: "ignore",
        stderr: "ignore",
      });
      await interruptWhileInUse(proc, join(sharedHome, "in-use", "smollm2", String(proc.pid)));
      expect(existsSync(out)).toBe(false);
      expect(readdirSync(work).filter((name) => name.startsWith("out"))).toEqual([]); // no staging folder either
    },
    TEST_TIMEOUT_MS,
  );
});
