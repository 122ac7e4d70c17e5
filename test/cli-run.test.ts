// `mlx run` as a user drives it: the real CLI in a child process, on a tiny random-weight
// model directory (SmolLM2's tokenizer), with pipes, flags, bad input and Ctrl-C.
import { beforeAll, describe, expect, test } from "bun:test";
import {
  existsSync,
  mkdtempSync,
  truncateSync,
  copyFileSync,
  mkdirSync,
  readFileSync,
  writeFileSync,
  statSync,
  readdirSync,
  symlinkSync,
} from "node:fs";
import type { ArgsDef } from "citty";
import { withLastValues } from "../src/cmd/strict-flags";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { writeScriptedModel } from "./helpers/scripted-model";
import { writeTinyModel } from "./helpers/tiny-model";
import { cliRunner, interruptWhileInUse, mainScript as main } from "./helpers/cli";

const root = mkdtempSync(join(tmpdir(), "mlx-cli-"));
const model = join(root, "tiny");
const env = { ...process.env, MLX_HOME: join(root, "home"), NO_COLOR: "1" };
const mlx = cliRunner(join(root, "home"));

beforeAll(() => writeTinyModel(model, { contextLength: 256 }));

describe("mlx run", () => {
  test("--json gives text, token ids, finish reason and figures; --max-tokens bounds the answer", async () => {
    const r = await mlx(["run", "-m", model, "--max-tokens", "5", "--json", "Hello"]);
    expect(r.code).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out.token_ids.length).toBeLessThanOrEqual(5);
    expect(["length", "stop"]).toContain(out.finish_reason);
    expect(out.prompt_token_ids[0]).toBe(1); // <|im_start|> from the chat template
    expect(out.stats.peak_memory_bytes).toBeGreaterThan(0);
    expect(typeof out.text).toBe("string");
  });

  test("streams only the answer to stdout; greedy runs repeat exactly; a seed makes sampling repeat", async () => {
    const a = await mlx(["run", "-m", model, "--max-tokens", "8", "Hi there"]);
    const b = await mlx(["run", "-m", model, "--max-tokens", "8", "Hi there"]);
    expect(a.code).toBe(0);
    expect(a.stdout).toBe(b.stdout);
    const s1 = await mlx(["run", "-m", model, "--max-tokens", "8", "--temp", "1", "--seed", "7", "--json", "Hi"]);
    const s2 = await mlx(["run", "-m", model, "--max-tokens", "8", "--temp", "1", "--seed", "7", "--json", "Hi"]);
    expect(JSON.parse(s1.stdout).token_ids).toEqual(JSON.parse(s2.stdout).token_ids);
  });

  test("a temperature too small to divide by (1e-39) answers as greedy, its limit", async () => {
    const greedy = await mlx(["run", "-m", model, "--max-tokens", "8", "--json", "Hi there"]);
    const tiny = await mlx([
      "run",
      "-m",
      model,
      "--max-tokens",
      "8",
      "--temp",
      "1e-39",
      "--seed",
      "3",
      "--json",
      "Hi there",
    ]);
    expect(tiny.code).toBe(0);
    expect(JSON.parse(tiny.stdout).token_ids).toEqual(JSON.parse(greedy.stdout).token_ids);
  });

  test("piped stdin joins the prompt argument", async () => {
    const alone = await mlx(["run", "-m", model, "--max-tokens", "1", "--json", "Summarize"]);
    const piped = await mlx(["run", "-m", model, "--max-tokens", "1", "--json", "Summarize"], "some notes\n");
    expect(JSON.parse(piped.stdout).prompt_token_ids.length).toBeGreaterThan(
      JSON.parse(alone.stdout).prompt_token_ids.length,
    );
    const onlyStdin = await mlx(["run", "-m", model, "--max-tokens", "1", "--json"], "just stdin");
    expect(onlyStdin.code).toBe(0);
  });

  test("piped code keeps its first line's indentation; blank lines around it go", async () => {
    const ids = async (args: string[], stdin?: string) =>
      JSON.parse((await mlx(["run", "-m", model, "--raw", "--max-tokens", "1", "--json", ...args], stdin)).stdout)
        .prompt_token_ids as number[];
    const indented = await ids(["    return a + b"]);
    expect(await ids([], "\n\n    return a + b\n  \n")).toEqual(indented);
    expect(indented).not.toEqual(await ids(["return a + b"]));
    const blank = await mlx(["run", "-m", model, "--max-tokens", "1"], "\n  \n");
    expect(blank.stderr.trim()).toStartWith("error: no prompt");
  });

  test("--verbose prints the figures on stderr, not stdout", async () => {
    const r = await mlx(["run", "-m", model, "--max-tokens", "3", "--verbose", "Hi"]);
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(/prompt:\s+\d+ tokens, [\d.]+ tokens\/s/);
    expect(r.stderr).toMatch(/generation: \d+ tokens/);
    expect(r.stderr).toMatch(/time to first token/);
    expect(r.stderr).toMatch(/peak memory/);
    expect(r.stdout).not.toMatch(/tokens\/s/);
  });

  // Agreement with the float cache is tested in kv-cache.test.ts and on the default model (this
  // random model's logits are near ties over SmolLM2's 49k tokens).
  test("--kv-bits, --kv-group-size and --kv-quant-start answer, and greedy answers repeat", async () => {
    const wide = join(root, "tiny-wide");
    writeTinyModel(wide, { contextLength: 256, headDim: 64, seed: 5 });
    const answer = async (...flags: string[]) => {
      const r = await mlx(["run", "-m", wide, "--max-tokens", "12", "--json", ...flags, "Tell me a story"]);
      expect(r.code).toBe(0);
      return JSON.parse(r.stdout).token_ids;
    };
    expect(await answer("--kv-bits", "8")).toEqual(await answer("--kv-bits", "8"));
    expect(await answer("--kv-bits", "4", "--kv-group-size", "32", "--kv-quant-start", "4")).toHaveLength(12);
  });

  test("a directory holding one GGUF file (the store's models/<name>/ of a GGUF model) runs that file; of several, the user picks", async () => {
    const shared = join(process.env.MLX_HOME ?? join(import.meta.dir, "..", ".cache", "mlx-home"), "models", "smollm2");
    const gguf = join(shared, readdirSync(shared).find((f) => f.endsWith(".gguf"))!);
    const ask = ["--max-tokens", "3", "--json", "hi"];
    const fromFile = await mlx(["run", "-m", gguf, ...ask]);
    expect(fromFile.code).toBe(0);
    // It was "has no config.json", and for the store's own directory "may be damaged: run mlx verify".
    const fromDir = await mlx(["run", "-m", shared, ...ask]);
    expect(fromDir).toMatchObject({ code: 0, stderr: "" });
    expect(JSON.parse(fromDir.stdout).token_ids).toEqual(JSON.parse(fromFile.stdout).token_ids);
    const two = join(root, "two-ggufs");
    mkdirSync(two);
    for (const name of ["a.gguf", "b.gguf"]) symlinkSync(gguf, join(two, name));
    expect(await mlx(["run", "-m", two, ...ask])).toMatchObject({
      code: 1,
      stderr: `error: ${two} holds several GGUF files (a.gguf, b.gguf): give one of them, e.g. ${join(two, "a.gguf")}\n`,
    });
  });

  test("an answer the full context cuts short before --max-tokens says so on stderr; one --max-tokens ends does not", async () => {
    const prompt = "word ".repeat(240);
    const cut = await mlx(["run", "-m", model, "--raw", "--max-tokens", "100", prompt]);
    expect(cut.code).toBe(0);
    expect(cut.stderr).toBe("note: the context is full (256 tokens): the answer was cut short\n");
    const ended = await mlx(["run", "-m", model, "--raw", "--max-tokens", "3", prompt]);
    expect(ended.code).toBe(0);
    expect(ended.stderr).toBe("");
  });

  test("--raw skips the chat template", async () => {
    const r = await mlx(["run", "-m", model, "--max-tokens", "1", "--raw", "--json", "Hello"]);
    expect(JSON.parse(r.stdout).prompt_token_ids).not.toContain(1);
  });

  test("characters of several tokens reach stdout whole: a --stop across tokens, a --max-tokens within a character", async () => {
    // " 日本語" is seven tokens (a byte or two of a character each), " 👍" three.
    const scripted = join(root, "scripted");
    writeScriptedModel(scripted, ["Hi", " 日本語", " 👍", " e\u0301"]);
    const answer = async (args: string[]) => {
      const r = await mlx(["run", "-m", scripted, ...args, "hi"]);
      expect(r.code).toBe(0);
      return r.stdout;
    };
    expect(await answer([])).toBe("Hi 日本語 👍 e\u0301\n");
    expect(await answer(["--stop", "本語", "--stop", "👍"])).toBe("Hi 日\n");
    // Three tokens end within 日: the answer ends before it, with no U+FFFD for its first byte.
    expect(await answer(["--max-tokens", "3"])).toBe("Hi \n");
    expect(JSON.parse(await answer(["--max-tokens", "10", "--json"])).text).toBe("Hi 日本語 ");
  });
});

describe("mlx run: bad input is one line and a non-zero exit", () => {
  const oneLineError = (r: { stderr: string; code: number }, pattern: RegExp) => {
    expect(r.code).not.toBe(0);
    const lines = r.stderr.trim().split("\n");
    expect(lines.at(-1)).toMatch(/^error: /);
    expect(r.stderr).toMatch(pattern);
    expect(r.stderr).not.toMatch(/\n\s+at /); // no stack trace without --verbose
  };

  test("a missing path", async () =>
    oneLineError(await mlx(["run", "-m", join(root, "nope"), "hi"]), /model not found/));

  test("a Hugging Face repository named as mlx-lm takes it (org/repo) points at hf:", async () =>
    oneLineError(
      await mlx(["run", "-m", "mlx-community/SmolLM2-135M-Instruct-4bit", "hi"]),
      /^error: model not found: mlx-community\/SmolLM2-135M-Instruct-4bit; for the Hugging Face repository, give hf:mlx-community\/SmolLM2-135M-Instruct-4bit /m,
    ));

  test("a Hugging Face repository named as Ollama takes it (hf.co/org/repo:quantization) points at hf:", async () =>
    oneLineError(
      await mlx(["run", "-m", "hf.co/bartowski/SmolLM2-135M-Instruct-GGUF:Q8_0", "hi"]),
      /^error: model not found: hf\.co\/bartowski\/SmolLM2-135M-Instruct-GGUF:Q8_0; for the Hugging Face repository, give hf:bartowski\/SmolLM2-135M-Instruct-GGUF:Q8_0 /m,
    ));

  test("an unknown alias suggests close ones", async () =>
    oneLineError(await mlx(["run", "-m", "smollm", "hi"]), /unknown model 'smollm'.*did you mean 'smollm2'/));

  test("a truncated safetensors file", async () => {
    const broken = join(root, "broken");
    mkdirSync(broken, { recursive: true });
    for (const f of ["config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"])
      copyFileSync(join(model, f), join(broken, f));
    truncateSync(join(broken, "model.safetensors"), Math.floor(statSync(join(broken, "model.safetensors")).size / 2));
    oneLineError(await mlx(["run", "-m", broken, "hi"]), /cannot load .*model.safetensors/);
  });

  test("a corrupt GGUF file", async () => {
    const bad = join(root, "bad.gguf");
    writeFileSync(bad, Buffer.concat([Buffer.from("GGUF"), Buffer.alloc(64, 7)]));
    oneLineError(await mlx(["run", "-m", bad, "hi"]), /cannot load .*bad.gguf/);
  });

  test("a prompt longer than the context", async () => {
    oneLineError(
      await mlx(["run", "-m", model, "word ".repeat(400)]),
      /This model's maximum context length is 256 tokens\. However, the prompt is \d+ tokens/,
    );
  });

  test("--system where no chat template would take it (--raw, a model without one) is refused, not dropped", async () => {
    oneLineError(
      await mlx(["run", "-m", model, "--raw", "--system", "Answer in French", "hi"]),
      /--system needs the chat template, which --raw leaves out/,
    );
    const untemplated = join(root, "untemplated");
    mkdirSync(untemplated, { recursive: true });
    for (const f of ["config.json", "tokenizer.json", "model.safetensors"])
      copyFileSync(join(model, f), join(untemplated, f));
    const { chat_template: _, ...config } = JSON.parse(readFileSync(join(model, "tokenizer_config.json"), "utf8"));
    writeFileSync(join(untemplated, "tokenizer_config.json"), JSON.stringify(config));
    oneLineError(
      await mlx(["run", "-m", untemplated, "--system", "Answer in French", "hi"]),
      /this model has no chat template to put --system in/,
    );
    // Without --system, such a model still answers its prompt as plain text.
    expect((await mlx(["run", "-m", untemplated, "--max-tokens", "1", "hi"])).code).toBe(0);
  });

  test("an invalid flag value", async () => {
    oneLineError(await mlx(["run", "-m", model, "--temp", "hot", "hi"]), /--temp must be a number/);
    // Named by the flag, not by the sampling value the engine checks (top_p, repetition penalty).
    oneLineError(
      await mlx(["run", "-m", model, "--top-p", "2", "hi"]),
      /^error: --top-p must be in \(0, 1\] \(got 2\)$/m,
    );
    oneLineError(
      await mlx(["run", "-m", model, "--repeat-penalty", "0", "hi"]),
      /^error: --repeat-penalty must be > 0 \(got 0\)$/m,
    );
    // Whole numbers are plain decimals: not hexadecimal, not exponents, not past what a double holds exactly.
    for (const value of ["0x10", "1e2", "5.0", "99999999999999999999"])
      oneLineError(
        await mlx(["run", "-m", model, "--max-tokens", value, "hi"]),
        new RegExp(`--max-tokens must be a whole number > 0 \\(got '${value}'\\)`),
      );
    oneLineError(
      await mlx(["run", "-m", model, "--top-k", "1e1", "hi"]),
      /--top-k must be a whole number \(got '1e1'\)/,
    );
    oneLineError(await mlx(["run", "-m", model, "--max-tokens", "0", "hi"]), /--max-tokens/);
    oneLineError(await mlx(["run", "-m", model, "--kv-bits", "3", "hi"]), /--kv-bits must be 4 or 8/);
    oneLineError(
      await mlx(["run", "-m", model, "--kv-bits", "8", "--kv-group-size", "16", "hi"]),
      /--kv-group-size must be 32, 64 or 128/,
    );
    // The tiny model's heads are 16 wide: no group size fits (the smallest is 32), none is suggested.
    oneLineError(
      await mlx(["run", "-m", model, "--kv-bits", "8", "hi"]),
      /head size \(16\) to be a multiple of its group size \(64\); this model's KV cache cannot be quantized\s*$/,
    );
  });

  test("no prompt at all", async () => oneLineError(await mlx(["run", "-m", model], ""), /no prompt/));

  test("--think, --no-think or --thinking-budget with --raw (no chat template to switch or split thinking) is refused, not ignored", async () => {
    const thinker = join(root, "tiny-thinks");
    writeTinyModel(thinker, {
      chatTemplate:
        "{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{%- endfor %}" +
        "{%- if add_generation_prompt %}<|im_start|>assistant\n<think>\n{%- endif %}",
    });
    const budgeted = await mlx(["run", "-m", thinker, "--thinking-budget", "2", "--max-tokens", "6", "--json", "hi"]);
    expect(JSON.parse(budgeted.stdout).reasoning).toBeDefined();
    // With --raw each answered as if it were not given, unsaid.
    for (const flags of [["--thinking-budget", "2"], ["--think"], ["--no-think"]])
      oneLineError(
        await mlx(["run", "-m", thinker, "--raw", ...flags, "--max-tokens", "6", "hi"]),
        /^error: --think, --no-think and --thinking-budget need the chat template, which --raw leaves out: give one or the other$/m,
      );
  });

  test("stdin that cannot be read (`< folder`) is named as stdin, in run and cache-prompt", async () => {
    for (const command of [`run -m "${model}" hi`, `cache-prompt -m "${model}" "${join(root, "x.cache")}"`]) {
      const proc = Bun.spawn(["bash", "-c", `"${process.execPath}" "${main}" ${command} < "${root}"`], {
        stdout: "pipe",
        stderr: "pipe",
        env,
      });
      const [stderr, code] = await Promise.all([new Response(proc.stderr).text(), proc.exited]);
      // It was "error: Directories cannot be read like files".
      expect({ code, stderr }).toEqual({ code: 1, stderr: "error: cannot read stdin: it is a directory\n" });
    }
  });

  test("a --stop that would change nothing (with --format or --schema, or empty) is refused, not ignored", async () => {
    const schema = join(root, "word.schema.json");
    writeFileSync(schema, JSON.stringify({ type: "string" }));
    // The grammar ends a JSON answer itself: a stop string inside it was dropped, unsaid.
    for (const format of [
      ["--format", "json"],
      ["--schema", schema],
    ])
      oneLineError(
        await mlx(["run", "-m", model, ...format, "--stop", ",", "--max-tokens", "20", "hi"]),
        /^error: --stop cannot end a JSON answer \(--format, --schema\): the grammar ends it; give one or the other$/m,
      );
    // An unset variable (--stop "$STOP") stopped nothing, unsaid.
    oneLineError(
      await mlx(["run", "-m", model, "--stop", "", "--max-tokens", "2", "hi"]),
      /^error: --stop needs text$/m,
    );
  });

  test("--kv-group-size and --kv-quant-start without --kv-bits would change nothing: refused, as in chat, serve and bench", async () => {
    for (const command of ["run", "chat", "bench"]) {
      oneLineError(
        await mlx([command, "-m", model, "--kv-group-size", "32"]),
        /^error: --kv-group-size needs --kv-bits \(8 or 4\)$/m,
      );
      oneLineError(
        await mlx([command, "-m", model, "--kv-quant-start", "4"]),
        /^error: --kv-quant-start needs --kv-bits \(8 or 4\)$/m,
      );
    }
    oneLineError(
      await mlx(["serve", "--port", "0", "--kv-group-size", "32"]),
      /^error: --kv-group-size needs --kv-bits \(8 or 4\)$/m,
    );
    // The value is checked too, with --kv-bits or without.
    oneLineError(
      await mlx(["run", "-m", model, "--kv-quant-start", "abc", "hi"]),
      /--kv-quant-start must be a whole number ≥ 0 \(got 'abc'\)/,
    );
    // As --num-draft without its partner, in serve too.
    oneLineError(
      await mlx(["serve", "--port", "0", "--num-draft", "2"]),
      /--num-draft needs --draft-model or --prompt-lookup/,
    );
  });

  test("--thinking-budget on a model that does not think is refused, as --think is", async () => {
    oneLineError(await mlx(["run", "-m", model, "--think", "hi"]), /this model does not think/);
    oneLineError(
      await mlx(["run", "-m", model, "--thinking-budget", "5", "hi"]),
      /^error: this model does not think .*--thinking-budget/m,
    );
    oneLineError(await mlx(["chat", "-m", model, "--thinking-budget", "5"], "hi\n"), /this model does not think/);
  });

  test("a flag given twice keeps its last value (as argparse); repeatable ones keep every value", async () => {
    const r = await mlx(["run", "-m", model, "--max-tokens", "9", "--max-tokens", "2", "--json", "hi"]);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout).token_ids.length).toBeLessThanOrEqual(2);
    const runArgs = (await import("../src/cmd/run")).default.args as ArgsDef;
    expect(
      withLastValues(runArgs, [
        ...["--max-tokens", "5", "--stop", "a", "-v", "--max-tokens=6", "--stop", "b", "--no-verbose"],
        ...["-m", "x", "--model", "y", "hi", "--", "--max-tokens", "7"],
      ]),
    ).toEqual([
      "--stop",
      "a",
      "--max-tokens=6",
      "--stop",
      "b",
      "--no-verbose",
      "--model",
      "y",
      "hi",
      "--",
      "--max-tokens",
      "7",
    ]);
  });

  test("a command that takes no arguments refuses one instead of ignoring it", async () => {
    oneLineError(
      await mlx(["list", "extra"]),
      /^error: mlx list takes no arguments \(got 'extra'\); mlx list --help lists its options$/m,
    );
    oneLineError(await mlx(["verify", "extra"]), /^error: mlx verify takes no arguments \(got 'extra'\)/m);
    oneLineError(await mlx(["chat", "-m", model, "hello"]), /mlx chat takes no arguments \(got 'hello'\)/);
    // What follows launch's -- is the command it starts.
    oneLineError(await mlx(["launch", "-n", "2", "run", "hi"]), /mlx launch takes no arguments \(got 'run'\)/);
  });

  test("words past a command's arguments are refused (citty dropped them); run joins its words, as Ollama's does", async () => {
    oneLineError(
      await mlx(["show", "a", "b"]),
      /^error: mlx show takes one argument \('b' is one too many; quote one with spaces in it\)$/m,
    );
    oneLineError(await mlx(["convert", "a.gguf", "out", "extra"]), /mlx convert takes 2 arguments \('extra' is one/);
    const words = await mlx(["run", "-m", model, "--max-tokens", "6", "--json", "Hi", "there"]);
    const quoted = await mlx(["run", "-m", model, "--max-tokens", "6", "--json", "Hi there"]);
    expect(words.code).toBe(0);
    expect(JSON.parse(words.stdout).token_ids).toEqual(JSON.parse(quoted.stdout).token_ids);
    expect(JSON.parse(words.stdout).prompt_token_ids).toEqual(JSON.parse(quoted.stdout).prompt_token_ids);
  });

  test("a missing argument is one line on stderr naming it, not the usage on stdout", async () => {
    for (const [args, line] of [
      [["rm"], "error: mlx rm needs MODEL: aliases or stored model names (one or more); mlx rm --help shows its usage"],
      [
        ["cache-prompt", "-m", model],
        "error: mlx cache-prompt needs FILE: the prompt cache file to write; mlx cache-prompt --help shows its usage",
      ],
      [
        ["convert", "--bits", "8"],
        "error: mlx convert needs SOURCE: a .gguf file, or an alias whose source is one; mlx convert --help shows its usage",
      ],
    ] as const) {
      const r = await mlx([...args]);
      expect(r.code).toBe(1);
      expect(r.stdout).toBe("");
      expect(r.stderr).toBe(`${line}\n`);
    }
    // --help still shows the usage, on stdout.
    const help = await mlx(["rm", "--help"]);
    expect(help.code).toBe(0);
    expect(help.stdout).toContain("USAGE mlx rm");
  });

  test("an unknown command is one line on stderr, with the commands it looks like", async () => {
    for (const [word, line] of [
      ["serv", "error: unknown command 'serv' (did you mean serve?); mlx --help lists the commands"],
      ["frobnicate", "error: unknown command 'frobnicate'; mlx --help lists the commands"],
    ]) {
      const r = await mlx([word!, "-m", model]);
      expect(r.code).toBe(1);
      expect(r.stdout).toBe("");
      expect(r.stderr).toBe(`${line}\n`);
    }
  });

  test("an option before the command is one line, not dropped unsaid; a bare mlx and mlx help show the usage", async () => {
    for (const [args, line] of [
      [["--json", "list"], "error: '--json' comes before the command: options go after it (mlx list --json ...)"],
      [["--bogus"], "error: unknown option '--bogus' for mlx (it takes --help and --version)"],
    ] as const) {
      const r = await mlx([...args]);
      expect(r.code).toBe(1);
      expect(r.stdout).toBe("");
      expect(r.stderr).toBe(`${line}; mlx --help lists the commands\n`);
    }
    for (const [args, usage] of [
      [[], "USAGE mlx run|chat|"],
      [["help"], "USAGE mlx run|chat|"],
      [["help", "rm"], "USAGE mlx rm"],
    ] as const) {
      const r = await mlx([...args]);
      expect(r.code).toBe(0);
      expect(r.stdout).toContain(usage);
      expect(r.stderr).toBe("");
    }
  });

  test("--version prints the bare version on stdout, in CI and under TEST too (consola's level and CI prefix did not apply)", async () => {
    const { version } = JSON.parse(readFileSync(join(import.meta.dir, "..", "package.json"), "utf8"));
    const environments: Record<string, string>[] = [
      { NODE_ENV: "test" },
      { TEST: "1" },
      { CI: "1" },
      { NODE_ENV: "production" },
    ];
    for (const extraEnv of environments) {
      const r = await cliRunner(join(root, "home"), extraEnv)(["--version"]);
      expect(r).toEqual({ stdout: `${version}\n`, stderr: "", code: 0 });
    }
  });

  test("--help has no trailing blanks (citty padded every line to the longest description)", async () => {
    for (const args of [["--help"], ["run", "--help"], ["serve", "--help"]]) {
      const r = await mlx(args);
      expect(r.code).toBe(0);
      expect(r.stdout.split("\n").filter((line) => line.endsWith(" "))).toEqual([]);
    }
  });

  test("a kernel variable of the environment with a value the shim does not know is one line, not ignored", async () => {
    for (const [name, value, line] of [
      ["MLX_KERNELS", "off", "error: MLX_KERNELS must be 'mlx' (MLX's own kernels) or unset (ours), not 'off'"],
      ["MLX_CPU_ISA", "sse", "error: MLX_CPU_ISA must be portable, neon, avx2, avx512 or unset, not 'sse'"],
      ["MLX_CPU_THREADS", "two", "error: MLX_CPU_THREADS must be a number of threads (1 or more) or unset, not 'two'"],
      ["MLX_CPU_INT8", "yes", "error: MLX_CPU_INT8 must be 1, 0 or unset, not 'yes'"],
      ["MLX_HUGE_PAGES", "off", "error: MLX_HUGE_PAGES must be 1, 0 or unset, not 'off'"],
    ]) {
      const r = await cliRunner(join(root, "home"), { [name!]: value! })([
        "run",
        "-m",
        model,
        "--max-tokens",
        "1",
        "Hi",
      ]);
      expect(r.code).toBe(1);
      expect(r.stdout).toBe("");
      expect(r.stderr).toBe(`${line}\n`);
    }
  });

  test("a shim that cannot be loaded is one line (not Bun's stack trace), also for the usage; the store's commands need none", async () => {
    const notALibrary = join(root, "libmlx_shim.so");
    writeFileSync(notALibrary, "not a shared library\n");
    const withBrokenShim = cliRunner(join(root, "home"), { MLX_SHIM_PATH: notALibrary });
    for (const args of [
      ["run", "-m", model, "Hi"],
      ["serve", "--port", "0"],
    ]) {
      const r = await withBrokenShim(args);
      expect(r.code).toBe(1);
      expect(r.stdout).toBe("");
      expect(r.stderr).toStartWith(`error: cannot load ${notALibrary}: `);
      expect(r.stderr).toEndWith("; re-run scripts/setup.sh to rebuild it\n");
      expect(r.stderr.trim().split("\n")).toHaveLength(1);
    }
    // The usage lists the commands' descriptions, so it loads them all: the same line.
    for (const args of [[], ["--help"], ["help"]]) {
      const r = await withBrokenShim(args);
      expect(r.code).toBe(1);
      expect(r.stdout).toBe("");
      expect(r.stderr).toStartWith(`error: cannot load ${notALibrary}: `);
      expect(r.stderr.trim().split("\n")).toHaveLength(1);
    }
    // One named that is not there is not passed over for another.
    const missing = join(root, "no-such-dir", "libmlx_shim.so");
    const r = await cliRunner(join(root, "home"), { MLX_SHIM_PATH: missing })(["run", "-m", model, "Hi"]);
    expect(r).toEqual({ stdout: "", stderr: `error: MLX_SHIM_PATH names ${missing}, which does not exist\n`, code: 1 });
    // The store's commands need no MLX.
    const listed = await withBrokenShim(["list"]);
    expect(listed.code).toBe(0);
    expect(listed.stdout).toStartWith("NAME");
    expect(listed.stderr).toBe("");
  });

  test("launch's -n is -n in its help and its errors (not --n)", async () => {
    // Help is printed whatever the environment: consola's level would drop it under TEST or NODE_ENV=test.
    const proc = Bun.spawn([process.execPath, main, "launch", "--help"], {
      stdout: "pipe",
      env: { ...env, NODE_ENV: "test", TEST: "1", CI: "1" },
    });
    const help = { stdout: await new Response(proc.stdout).text(), code: await proc.exited };
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/^ +-n +Ranks to start/m);
    expect(help.stdout).not.toContain("--n ");
    // Still aligned with the other flags' column.
    const end = (flag: string) =>
      help.stdout
        .split("\n")
        .find((l) => l.trimStart().startsWith(`${flag} `))!
        .indexOf(`${flag} `);
    expect(end("-n") + 2).toBe(end("--plan") + 6);
    oneLineError(
      await mlx(["launch", "-n", "0", "--", "run", "hi"]),
      /^error: -n must be a whole number > 0 \(got '0'\)$/m,
    );
    oneLineError(await mlx(["launch", "-n"]), /^error: Option '-n <value>' argument missing/m);
  });

  test("a long alias is written in help as it is typed: fuse's --dequantize (not -dequantize, which is refused)", async () => {
    const proc = Bun.spawn([process.execPath, main, "fuse", "--help"], { stdout: "pipe", env });
    const help = { stdout: await new Response(proc.stdout).text(), code: await proc.exited };
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/^ *--dequantize, --de-quantize +Write a quantized base's weights/m);
    // Still aligned with the other flags' column.
    const end = (flag: string) => {
      const line = help.stdout.split("\n").find((l) => l.includes(`${flag} `))!;
      return line.indexOf(`${flag} `) + flag.length;
    };
    expect(end("--de-quantize")).toBe(end("--adapter"));
    oneLineError(
      await mlx(["fuse", "smollm2", "--adapter", "/no/such/dir", "-dequantize"]),
      /unknown option '-dequantize'/,
    );
  });

  test("a flag the command does not have (citty alone would ignore it): named, with the closest ones", async () => {
    oneLineError(
      await mlx(["run", "-m", model, "--temperature", "0.5", "hi"]),
      /^error: unknown option --temperature for mlx run \(did you mean --temp\?\); mlx run --help lists them$/m,
    );
    oneLineError(await mlx(["run", "-m", model, "-q", "hi"]), /unknown option -q for mlx run/);
    oneLineError(
      await mlx(["serve", "-m", model, "--prot", "0"]),
      /unknown option --prot for mlx serve \(did you mean --port\?\)/,
    );
    oneLineError(await mlx(["list", "--jsn"]), /unknown option --jsn for mlx list \(did you mean --json\?\)/);
    oneLineError(await mlx(["run", "-m", model, "--verbose=yes", "hi"]), /--verbose' does not take an argument/);
  });

  test("a negative number after a flag is its value (both parsers would read it as flags); other dashes get a hint", async () => {
    oneLineError(await mlx(["run", "-m", model, "--temp", "-1", "hi"]), /--temp must be >= 0 \(got -1\)/);
    oneLineError(
      await mlx(["run", "-m", model, "--max-tokens", "-2", "hi"]),
      /--max-tokens must be a whole number > 0 \(got '-2'\)/,
    );
    oneLineError(
      await mlx(["run", "-m", model, "--temp", "-x", "hi"]),
      /--temp takes a value: write one that starts with '-' as --temp=<value>/,
    );
    // A prompt that starts with '-' is read as one-letter flags: named whole, not as "Unknown option ' '".
    oneLineError(
      await mlx(["run", "-m", model, "-v hi"]),
      /^error: unknown option '-v hi' for mlx run; an argument that starts with '-' goes after --, as in mlx run -- '-v hi'$/m,
    );
    // Declared flags in every form still parse: a negative seed, a boolean's --no- form, what follows --.
    const r = await mlx(["run", "-m", model, "--seed", "-7", "--no-verbose", "--max-tokens", "2", "--", "hi"]);
    expect(r.code).toBe(0);
    expect((await mlx(["run", "-m", model, "--max-tokens", "2", "--", "-v hi"])).code).toBe(0);
  });

  test("--help past -- is a word of the prompt, not a call for the usage", async () => {
    const r = await mlx(["run", "-m", model, "--max-tokens", "2", "--json", "--", "--help"]);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout).token_ids).toHaveLength(2);
  });

  test("an empty value written --flag= is that flag's, not the next word's", async () => {
    oneLineError(await mlx(["run", "-m", model, "--draft-model=", "hi"]), /^error: --draft-model needs a model$/m);
    const r = await mlx(["run", "-m", model, "--system=", "hi", "--max-tokens=2", "--json"]);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout).token_ids).toHaveLength(2);
  });
});

describe("mlx run: a reader that goes away", () => {
  test("`| head -c 5`: the answer stops with SIGPIPE's status (141), nothing on stderr", async () => {
    const command = `"${process.execPath}" "${main}" run -m "${model}" --max-tokens 200 --temp 1 --seed 1 "tell me a story" | head -c 5 > /dev/null; echo "status \${PIPESTATUS[0]}" >&2`;
    const proc = Bun.spawn(["bash", "-c", command], { stdout: "pipe", stderr: "pipe", env });
    const [stderr, code] = await Promise.all([new Response(proc.stderr).text(), proc.exited]);
    expect(code).toBe(0);
    expect(stderr.trim()).toBe("status 141");
  });

  test("a stderr reader that goes away (`2>&1 >/dev/null | head -c 1` under --verbose): SIGPIPE's status too", async () => {
    const command = `"${process.execPath}" "${main}" run -v -m "${model}" --max-tokens 20 "hi" 2>&1 >/dev/null | head -c 1 > /dev/null; echo "status \${PIPESTATUS[0]}" >&2`;
    const proc = Bun.spawn(["bash", "-c", command], { stdout: "pipe", stderr: "pipe", env });
    const [stderr, code] = await Promise.all([new Response(proc.stderr).text(), proc.exited]);
    expect(code).toBe(0);
    // It was status 1: the figures' write to the closed stderr failed as an unhandled error.
    expect(stderr.trim()).toBe("status 141");
  });

  test.skipIf(!existsSync("/dev/full"))(
    "a stdout that cannot be written (`> /dev/full`) is one line, no stack trace",
    async () => {
      const command = `"${process.execPath}" "${main}" run -m "${model}" --max-tokens 5 "hi" > /dev/full`;
      const proc = Bun.spawn(["bash", "-c", command], { stdout: "pipe", stderr: "pipe", env });
      const [stderr, code] = await Promise.all([new Response(proc.stderr).text(), proc.exited]);
      expect(code).toBe(1);
      expect(stderr).toBe("error: cannot write the output: ENOSPC: no space left on device\n");
    },
  );

  test.skipIf(!existsSync("/dev/full"))(
    "the usage and the version that cannot be written (`> /dev/full`) are that line too, not status 0",
    async () => {
      for (const args of ["--version", "--help", "", "run --help", "help serve"]) {
        const proc = Bun.spawn(["bash", "-c", `"${process.execPath}" "${main}" ${args} > /dev/full`], {
          stdout: "pipe",
          stderr: "pipe",
          env,
        });
        const [stderr, code] = await Promise.all([new Response(proc.stderr).text(), proc.exited]);
        expect({ args, stderr, code }).toEqual({
          args,
          stderr: "error: cannot write the output: ENOSPC: no space left on device\n",
          code: 1,
        });
      }
    },
  );
});

describe("mlx run: Ctrl-C", () => {
  test("before the answer (the model loaded, the prompt still read): exit 130, and the in-use marker is gone", async () => {
    expect((await mlx(["pull", model])).code).toBe(0);
    // Piped stdin that stays open: the command waits for the rest of the prompt, the model open.
    const proc = Bun.spawn([process.execPath, main, "run", "-m", "tiny", "--max-tokens", "5", "hi"], {
      stdin: "pipe",
      stdout: "pipe",
      stderr: "pipe",
      env,
    });
    const marker = join(root, "home", "in-use", "tiny", String(proc.pid));
    await interruptWhileInUse(proc, marker);
  });

  test("stops generation cleanly with exit code 130", async () => {
    const proc = Bun.spawn(
      [
        process.execPath,
        main,
        "run",
        "-m",
        model,
        "--max-tokens",
        "100000",
        "--temp",
        "1",
        "--seed",
        "1",
        "tell me a story",
      ],
      { stdout: "pipe", stderr: "pipe", env },
    );
    const reader = proc.stdout.getReader();
    await reader.read(); // the first piece of the answer
    proc.kill("SIGINT");
    const code = await proc.exited;
    expect(code).toBe(130);
  });
});

const hasScript = Bun.spawnSync(["which", "script"]).exitCode === 0;

describe.skipIf(!hasScript)("mlx run on a terminal: a thinking model's reasoning", () => {
  // DeepSeek-R1-style: the prompt opens <think>, so the random model's answer starts as reasoning
  // and, in a few tokens, ends before any </think>.
  const thinking = join(root, "tiny-thinking");
  beforeAll(() =>
    writeTinyModel(thinking, {
      chatTemplate:
        "{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{%- endfor %}" +
        "{%- if add_generation_prompt %}<|im_start|>assistant\n<think>\n{%- endif %}",
    }),
  );

  /** What `mlx run` writes to a pseudo-terminal (util-linux's script gives it one). */
  const onTerminal = async (noColor: string | undefined) => {
    const command = `'${process.execPath}' '${main}' run -m '${thinking}' --max-tokens 6 hi`;
    const proc = Bun.spawn(["script", "-q", "-e", "-c", command, "/dev/null"], {
      stdin: "ignore",
      stdout: "pipe",
      stderr: "pipe",
      env: { ...process.env, MLX_HOME: join(root, "home"), NO_COLOR: noColor },
    });
    const [stdout, code] = await Promise.all([new Response(proc.stdout).text(), proc.exited]);
    expect(code).toBe(0);
    return stdout;
  };

  test("dimmed, and undimmed again when max tokens cuts it off before any answer", async () => {
    const out = await onTerminal(undefined);
    expect(out.startsWith("\x1b[2m")).toBe(true);
    expect(out.trimEnd().endsWith("\x1b[22m")).toBe(true); // the shell's prompt after it is not dim
  });

  test("NO_COLOR: no escape codes", async () => {
    const out = await onTerminal("1");
    expect(out.trim()).not.toBe("");
    expect(out).not.toContain("\x1b[");
  });
});
