// `mlx create NAME -f Modelfile`: an Ollama Modelfile (FROM, PARAMETER, SYSTEM in a """ block,
// MESSAGE, ADAPTER, LICENSE, comments) made into an alias in $MLX_HOME/models.toml, as
// /api/create writes it; what it cannot honour (TEMPLATE, an unknown instruction or parameter, no
// FROM) fails with a one-line error naming the line, nothing written. The CLI from source over a
// temporary MLX_HOME and a tiny random-weight model.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { cliRunner } from "./helpers/cli";
import { writeTinyModel } from "./helpers/tiny-model";

let root: string;
let home: string;
let tiny: string;
let mlx: ReturnType<typeof cliRunner>;

beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), "mlx-cli-create-"));
  home = join(root, "home");
  mkdirSync(home, { recursive: true });
  tiny = join(root, "models", "tiny");
  writeTinyModel(tiny, { contextLength: 512 });
  mlx = cliRunner(home);
});

afterAll(() => rmSync(root, { recursive: true, force: true }));

/** A Modelfile in the models folder (where its relative FROM starts). */
function modelfile(text: string): string {
  const file = join(root, "models", "Modelfile");
  writeFileSync(file, text);
  return file;
}

const SYSTEM = 'You are Mario.\nSay "wahoo" often.';
const aliasFile = () => join(home, "models.toml");

describe("mlx create", () => {
  test("makes the Modelfile's model: its system prompt, turns, parameters and license", async () => {
    const file = modelfile(
      [
        "# Mario, from the tiny model beside this file",
        "FROM ./tiny",
        "parameter temperature 0.7",
        "PARAMETER repeat_penalty 1.2",
        'SYSTEM """',
        ...SYSTEM.split("\n"),
        '"""',
        'MESSAGE user "Who are you?"',
        "MESSAGE assistant It's-a me!",
        "LICENSE MIT",
        "",
      ].join("\n"),
    );
    const r = await mlx(["create", "mario", "-f", file]);
    expect(r).toMatchObject({ code: 0, stderr: "" });
    expect(readFileSync(aliasFile(), "utf8")).toBe(
      [
        "[models.mario]",
        `source = ${JSON.stringify(tiny)}`,
        `system = ${JSON.stringify(SYSTEM)}`,
        'license = "MIT"',
        "temperature = 0.7",
        "repetition_penalty = 1.2",
        "messages = [",
        '  { role = "user", content = "Who are you?" },',
        `  { role = "assistant", content = "It's-a me!" },`,
        "]",
        "",
      ].join("\n"),
    );
    const shown = await mlx(["show", "mario"]);
    expect(shown.stdout).toContain("system ");
    expect(shown.stdout).toMatch(/^license +MIT$/m);

    // Its answers start from that system prompt and those turns.
    const promptTokens = async (args: string[]) => {
      const run = await mlx(["run", ...args, "--max-tokens", "1", "--temp", "0", "--json", "Hello"]);
      expect(run.code).toBe(0);
      return JSON.parse(run.stdout).stats.prompt_tokens as number;
    };
    const withSystem = await promptTokens(["-m", tiny, "--system", SYSTEM]);
    expect(await promptTokens(["-m", "mario"])).toBeGreaterThan(withSystem);
  });

  test("a real Modelfile's parameters: several stop lines, num_ctx, num_predict, seed, and /api/chat's no-ops", async () => {
    const file = modelfile(
      [
        "FROM ./tiny",
        'PARAMETER stop "<|im_start|>"',
        'PARAMETER stop "<|im_end|>"',
        "PARAMETER stop ###",
        "PARAMETER num_ctx 4096",
        "PARAMETER num_predict 2",
        "PARAMETER seed -1",
        "PARAMETER repeat_last_n -1",
        "PARAMETER presence_penalty 0.5",
        "PARAMETER num_keep 24",
        "PARAMETER penalize_newline false",
        "PARAMETER mirostat 0",
        "",
      ].join("\n"),
    );
    const r = await mlx(["create", "qwen-like", "-f", file]);
    expect(r).toMatchObject({ code: 0, stderr: "" });
    expect(readFileSync(aliasFile(), "utf8")).toContain(
      [
        "[models.qwen-like]",
        `source = ${JSON.stringify(tiny)}`,
        'stop = [ "<|im_start|>", "<|im_end|>", "###" ]',
        "num_ctx = 4096",
        "num_predict = 2",
        "repeat_last_n = -1",
        "presence_penalty = 0.5",
        "",
      ].join("\n"),
    );
    expect((await mlx(["rm", "-y", "qwen-like"])).code).toBe(0);
  });

  test("mlx run takes the made model's stop strings, num_predict and num_ctx where its flags give none", async () => {
    const run = async (args: string[]) => {
      const r = await mlx(["run", ...args, "--temp", "0", "--json", "Hello"]);
      expect(r).toMatchObject({ code: 0, stderr: "" });
      return JSON.parse(r.stdout) as { text: string; finish_reason: string; stats: { generated_tokens: number } };
    };
    const { text } = await run(["-m", tiny, "--max-tokens", "8"]);
    const stop = text.slice(-2);
    const file = modelfile(
      `FROM ./tiny\nPARAMETER num_predict 3\nPARAMETER num_ctx 40\nPARAMETER stop """${stop}"""\n`,
    );
    expect((await mlx(["create", "brief", "-f", file])).code).toBe(0);
    // num_predict: the answer's length (the stop string comes later); --max-tokens replaces it.
    const short = await run(["-m", "brief"]);
    expect(short.stats.generated_tokens).toBe((await run(["-m", tiny, "--max-tokens", "3"])).stats.generated_tokens);
    expect(short.text).toBe((await run(["-m", tiny, "--max-tokens", "3"])).text);
    // mlx chat too (its answer to a piped line is the same three tokens).
    const chat = await mlx(["chat", "-m", "brief"], "Hello\n");
    expect(chat).toMatchObject({ code: 0, stdout: `${short.text}\n` });
    // stop: the answer ends before the stop string; --stop replaces it.
    const stopped = await run(["-m", "brief", "--max-tokens", "8"]);
    expect(stopped).toMatchObject({ text: text.slice(0, text.indexOf(stop)), finish_reason: "stop" });
    expect((await run(["-m", "brief", "--max-tokens", "8", "--stop", "<|never|>"])).text).toBe(text);
    // num_ctx: a longer prompt is refused, naming it.
    const long = await mlx(["run", "-m", "brief", "treasure ".repeat(60)]);
    expect(long.code).not.toBe(0);
    expect(long.stderr).toContain("maximum context length is 40 tokens (num_ctx in models.toml)");
    expect((await mlx(["rm", "-y", "brief"])).code).toBe(0);
  });

  test("mlx chat's /model to another made model answers within its num_predict, unless the user chose a max_tokens", async () => {
    expect((await mlx(["create", "two", "-f", modelfile("FROM ./tiny\nPARAMETER num_predict 2\n")])).code).toBe(0);
    expect((await mlx(["create", "five", "-f", modelfile("FROM ./tiny\nPARAMETER num_predict 5\n")])).code).toBe(0);
    /** The answers (a line each) of a chat started on `two` with `flags`, fed `lines`. */
    const answers = async (flags: string[], lines: string[]) => {
      const r = await mlx(["chat", "-m", "two", "--temp", "0", ...flags], `${lines.join("\n")}\n`);
      expect(r.code).toBe(0);
      expect(r.stderr).toContain("now chatting with five");
      return r.stdout.split("\n").slice(0, -1);
    };
    // Switched, its answers are five's five tokens, as /set max_tokens 5 makes them.
    const switched = await answers([], ["Hello", "/model five", "Hello"]);
    expect(switched).toEqual(await answers([], ["Hello", "/model five", "/set max_tokens 5", "Hello"]));
    expect(switched[1]).not.toBe((await answers([], ["Hello", "/model five", "/set max_tokens 2", "Hello"]))[1]);
    // A max_tokens the user chose (--max-tokens, /set) stays across /model.
    const chosen = ["Hello", "/model five", "/set max_tokens 3", "Hello"];
    expect(await answers(["--max-tokens", "3"], ["Hello", "/model five", "Hello"])).toEqual(
      await answers(["--max-tokens", "3"], chosen),
    );
    expect(await answers([], ["/set max_tokens 3", "Hello", "/model five", "Hello"])).toEqual(
      await answers([], ["/set max_tokens 3", ...chosen]),
    );
    for (const name of ["two", "five"]) expect((await mlx(["rm", "-y", name])).code).toBe(0);
  });

  test("mlx run and mlx chat sample with the made model's parameters where their flags give none, as ollama run does", async () => {
    const file = modelfile("FROM ./tiny\nPARAMETER temperature 1\nPARAMETER seed 7\nPARAMETER num_predict 8\n");
    expect((await mlx(["create", "sampled", "-f", file])).code).toBe(0);
    const run = async (args: string[]) => {
      const r = await mlx(["run", ...args, "--json", "Hello"]);
      expect(r).toMatchObject({ code: 0, stderr: "" });
      return JSON.parse(r.stdout) as { text: string; token_ids: number[] };
    };
    const greedy = await run(["-m", tiny, "--max-tokens", "8"]);
    const sampled = await run(["-m", "sampled"]);
    // Its temperature and seed: as the flags that say them, not greedy.
    expect(sampled.token_ids).toEqual(
      (await run(["-m", tiny, "--max-tokens", "8", "--temp", "1", "--seed", "7"])).token_ids,
    );
    expect(sampled.token_ids).not.toEqual(greedy.token_ids);
    // A flag replaces the model's value.
    expect((await run(["-m", "sampled", "--temp", "0"])).token_ids).toEqual(greedy.token_ids);
    // mlx chat too, and /set replaces it there.
    const chat = async (flags: string[], lines: string) => {
      const r = await mlx(["chat", "-m", "sampled", ...flags], lines);
      expect(r.code).toBe(0);
      return r.stdout;
    };
    expect(await chat([], "Hello\n")).toBe(`${sampled.text}\n`);
    expect(await chat(["--temp", "0"], "Hello\n")).toBe(`${greedy.text}\n`);
    expect(await chat([], "/set temp 0\nHello\n")).toBe(`${greedy.text}\n`);
    // A seed of -1 (as Ollama reads it): a random one over the model's 7.
    expect((await run(["-m", "sampled", "--seed", "-1"])).token_ids).not.toEqual(sampled.token_ids);
    const random = await mlx(
      ["chat", "-m", "sampled", "--seed", "-1"],
      "/show\n/set seed 3\n/show\n/set seed -1\n/show\n",
    );
    expect([...random.stderr.matchAll(/, seed (\w+),/g)].map((m) => m[1])).toEqual(["random", "3", "random"]);
    const shown = await mlx(["chat", "-m", "sampled", "--top-k", "5"], "/show\n");
    expect(shown.stderr).toMatch(
      /settings: +temp 1, top_p 1, top_k 5, min_p 0, repeat_penalty 1, max_tokens 8, seed 7,/,
    );
    expect((await mlx(["rm", "-y", "sampled"])).code).toBe(0);
  });

  test("a FROM or ADAPTER path starting with ~/ is from the home folder", async () => {
    const r = await cliRunner(home, { HOME: root })(["create", "homely", "-f", modelfile("FROM ~/models/tiny\n")]);
    expect(r).toMatchObject({ code: 0, stderr: "" });
    expect(readFileSync(aliasFile(), "utf8")).toContain(`[models.homely]\nsource = ${JSON.stringify(tiny)}\n`);
    expect((await mlx(["rm", "-y", "homely"])).code).toBe(0);
  });

  test("made again, the entry is replaced where it is; the file's other lines stay", async () => {
    writeFileSync(aliasFile(), `# mine\n[models.other]\nsource = "${tiny}"\n\n${readFileSync(aliasFile(), "utf8")}`);
    const r = await mlx(["create", "mario", "-f", modelfile(`FROM ${tiny}\nSYSTEM Be brief.\n`)]);
    expect(r.code).toBe(0);
    expect(readFileSync(aliasFile(), "utf8")).toBe(
      `# mine\n[models.other]\nsource = "${tiny}"\n\n[models.mario]\nsource = ${JSON.stringify(tiny)}\nsystem = "Be brief."\n`,
    );
  });

  test("a model made from a stored one by its name runs, and pulling it pulls that one", async () => {
    expect((await mlx(["pull", tiny])).code).toBe(0); // stored as "tiny"
    expect((await mlx(["create", "stored-mario", "-f", modelfile("FROM tiny\nSYSTEM Wahoo.\n")])).code).toBe(0);
    expect(readFileSync(aliasFile(), "utf8")).toContain('[models.stored-mario]\nsource = "tiny"\n');
    const pulled = await mlx(["pull", "stored-mario"]);
    expect(pulled).toMatchObject({ code: 0, stderr: "" });
    const run = await mlx(["run", "-m", "stored-mario", "--max-tokens", "1", "hi"]);
    expect(run).toMatchObject({ code: 0, stderr: "" });
  });

  test("mlx rm of the stored model a made model is made from is refused, naming that one; it goes once that one does", async () => {
    writeFileSync(aliasFile(), "");
    expect((await mlx(["pull", tiny])).code).toBe(0); // stored as "tiny"
    expect((await mlx(["create", "tiny-mario", "-f", modelfile("FROM tiny\nSYSTEM Wahoo.\n")])).code).toBe(0);
    const refused = await mlx(["rm", "-y", "tiny"]);
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toContain(
      "'tiny-mario' is made from 'tiny': delete it first, or make it from another model",
    );
    // Nothing removed: the made model still runs.
    expect((await mlx(["run", "-m", "tiny-mario", "--max-tokens", "1", "hi"])).code).toBe(0);
    // Removed in one command with the made model, it goes.
    expect((await mlx(["rm", "-y", "tiny-mario", "tiny"])).code).toBe(0);
    expect(readFileSync(aliasFile(), "utf8")).not.toContain("tiny-mario");
    expect((await mlx(["list"])).stdout).not.toMatch(/^tiny /m);
  });

  test("mlx rm of a made model removes its entry alone", async () => {
    writeFileSync(aliasFile(), `# mine\n[models.other]\nsource = "${tiny}"\n`);
    expect((await mlx(["create", "gone", "-f", modelfile(`FROM ${tiny}\nSYSTEM Bye.\n`)])).code).toBe(0);
    const r = await mlx(["rm", "-y", "gone"]);
    expect(r).toMatchObject({ code: 0, stderr: "" });
    expect(readFileSync(aliasFile(), "utf8")).toBe(`# mine\n[models.other]\nsource = "${tiny}"\n`);
    expect((await mlx(["rm", "-y", "gone"])).stderr).toContain("no stored model named 'gone'");
  });

  test("what it cannot honour fails naming the line, and nothing is written", async () => {
    const before = readFileSync(aliasFile(), "utf8");
    const refused = async (text: string, message: string) => {
      const r = await mlx(["create", "luigi", "-f", modelfile(text)]);
      expect(r.code).not.toBe(0);
      expect(r.stderr.trim().split("\n")).toHaveLength(1);
      expect(r.stderr).toContain(message);
      expect(readFileSync(aliasFile(), "utf8")).toBe(before);
    };
    await refused(`FROM ${tiny}\nTEMPLATE """{{ .Prompt }}"""\n`, "Modelfile:2: TEMPLATE is a Go template");
    await refused(`FROM ${tiny}\nFROBNICATE yes\n`, "Modelfile:2: unknown instruction 'FROBNICATE'");
    await refused(`SYSTEM hi\n`, "no FROM line");
    await refused(`FROM ${tiny}\nSYSTEM """never closed\n`, 'Modelfile:2: a """ block that is never closed');
    await refused(`FROM ${tiny}\nMESSAGE system hi\n`, "MESSAGE's role must be user or assistant");
    await refused(`FROM ${tiny}\nPARAMETER temprature 0.5\n`, "unknown parameter 'temprature'");
    await refused(`FROM ${tiny}\nPARAMETER mirostat 2\n`, "parameter 'mirostat' is not supported here");
    await refused(`FROM ${tiny}\nPARAMETER num_ctx lots\n`, "num_ctx must be a whole number >= 1");
    await refused(`FROM ${tiny}\nPARAMETER seed 1\nPARAMETER seed 2\n`, "Modelfile:3: PARAMETER seed is given twice");
    await refused(`FROM ${tiny}\nPARAMETER top_k lots\n`, "parameter 'top_k' must be a whole number >= 0");
    await refused(`FROM ./nowhere\n`, "not found");
    const missing = await mlx(["create", "luigi", "-f", join(root, "no-such-Modelfile")]);
    expect(missing.code).not.toBe(0);
    expect(missing.stderr).toContain("cannot read it");
    expect(readFileSync(aliasFile(), "utf8")).toBe(before);
  });
});
