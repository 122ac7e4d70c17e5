// Ollama's create (POST /api/create, as the official `ollama` client sends it): a model made from
// a stored model, an alias or a path, with a system prompt, turns, sampling parameters, an
// adapter and a license, written as an alias into the user's models.toml (its other entries
// and comments kept), listed, answering with its system prompt, and removed by /api/delete.
// What it cannot make is a 4xx in Ollama's shape with nothing written. A real server on loopback
// over a temporary MLX_HOME holding a tiny random-weight model.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Ollama, type ModelResponse, type ProgressResponse } from "ollama";
import type { RunningServer } from "../src/server/app";
import { cliRunner } from "./helpers/cli";
import { lastLayers, writeRandomAdapter } from "./helpers/random-adapter";
import { post, serve } from "./helpers/serve";
import { tinyDims, writeTinyModel } from "./helpers/tiny-model";

const savedHome = process.env.MLX_HOME;
const SYSTEM = 'You are a pirate.\nAnswer in "rhymes".';
const HAND_WRITTEN =
  `# My own models (a comment create keeps)\n\n[models.mine]\nsource = "tiny" # stored\ntemperature = 0.3\n\n` +
  `[models.far]\nprovider = "openai"\nbase_url = "http://127.0.0.1:9/v1"\nmodel = "tiny"\n`;
let server: RunningServer;
let ollama: Ollama;
let root: string;
let home: string;
let tiny: string;
let file: string;

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), "mlx-create-"));
  home = join(root, "home");
  process.env.MLX_HOME = home;
  tiny = join(root, "tiny");
  writeTinyModel(tiny, { contextLength: 512 });
  // Stored as the model "tiny", as `mlx pull <dir>` stores a local model.
  const pulled = await cliRunner(home)(["pull", tiny]);
  expect(pulled.stderr).toBe(pulled.code === 0 ? pulled.stderr : "");
  expect(pulled.code).toBe(0);
  mkdirSync(home, { recursive: true });
  file = join(home, "models.toml");
  writeFileSync(file, HAND_WRITTEN);
  server = serve({});
  ollama = new Ollama({ host: server.url });
}, 60_000);

afterAll(() => {
  server.stop();
  if (savedHome === undefined) delete process.env.MLX_HOME;
  else process.env.MLX_HOME = savedHome;
});

const once = { num_predict: 1, temperature: 0 };
const user = { role: "user", content: "Where is the treasure?" };
const turns = [
  { role: "user", content: "Ahoy?" },
  { role: "assistant", content: "Arr!" },
];

async function promptTokens(model: string, messages: object[]): Promise<number> {
  return (await ollama.chat({ model, messages: messages as any, stream: false, options: once })).prompt_eval_count;
}

/**
 * Checks that the made model `name` is gone from the server: neither /api/ps nor /v1/models lists
 * it, a request for it (or name:latest) is a 404, and "tiny", which it was made from, is still
 * loaded. Returns the names /api/ps lists.
 */
async function expectGone(name: string): Promise<string[]> {
  const loaded = (await ollama.ps()).models.map((m) => m.name);
  expect(loaded.filter((listed) => listed.startsWith(name))).toEqual([]);
  expect(loaded).toContain("tiny");
  const served = (await (await fetch(`${server.url}/v1/models`)).json()) as { data: { id: string }[] };
  expect(served.data.map((m) => m.id).filter((id) => id.startsWith(name))).toEqual([]);
  for (const model of [name, `${name}:latest`])
    await expect(ollama.chat({ model, messages: [user], stream: false, options: once })).rejects.toMatchObject({
      status_code: 404,
    });
  return loaded;
}

/** Every line of a streamed create. */
async function created(request: Parameters<typeof ollama.create>[0]): Promise<ProgressResponse[]> {
  const lines: ProgressResponse[] = [];
  for await (const line of await ollama.create({ ...request, stream: true })) lines.push(line);
  return lines;
}

describe("POST /api/create", () => {
  test("makes a model from a stored one: listed, shown, answering with its system prompt and turns", async () => {
    const lines = await created({
      model: "pirate",
      from: "tiny",
      system: SYSTEM,
      messages: turns,
      parameters: { temperature: 0.5, top_k: 7, repeat_penalty: 1.1 },
      license: "MIT",
    });
    expect(lines.at(-1)).toEqual({ status: "success" } as ProgressResponse);
    expect(lines.length).toBeGreaterThan(1);
    // The user's file keeps what it held, comments included, with the new entry after it.
    const text = readFileSync(file, "utf8");
    expect(text.startsWith(HAND_WRITTEN)).toBe(true);
    expect(text).toContain('[models.pirate]\nsource = "tiny"\n');

    const listed = (await ollama.list()).models.find((m) => m.name === "pirate");
    expect(listed?.details.parent_model).toBe("tiny");
    const models = (await fetch(`${server.url}/v1/models`).then((r) => r.json())) as { data: { id: string }[] };
    expect(models.data.map((m) => m.id)).toContain("pirate");

    const shown = await ollama.show({ model: "pirate" });
    expect(shown.system).toBe(SYSTEM);
    expect(shown.messages).toEqual(turns);
    expect(shown.license).toBe("MIT");
    expect(shown.parameters).toMatch(/^temperature +0\.5$/m);
    expect(shown.parameters).toMatch(/^top_k +7$/m);
    expect(shown.parameters).toMatch(/^repeat_penalty +1\.1$/m);
    // Made from tiny, as /api/tags lists it (and Ollama shows a model made FROM another).
    expect(shown.details).toEqual(listed!.details);

    const expected = await promptTokens(tiny, [{ role: "system", content: SYSTEM }, ...turns, user]);
    expect(await promptTokens("pirate", [user])).toBe(expected);
    expect(await promptTokens("pirate:latest", [user])).toBe(expected);
  });

  test("stream: false answers one success; creating it again replaces it; one made from it inherits", async () => {
    const r = await post(`${server.url}/api/create`, { model: "parrot", from: tiny, system: "Squawk.", stream: false });
    expect(r).toMatchObject({ status: 200, json: { status: "success" } });
    expect(readFileSync(file, "utf8")).toContain(`[models.parrot]\nsource = ${JSON.stringify(tiny)}\n`);
    // (The official client refuses a local path as `from` itself: sent as other clients send it.)
    await post(`${server.url}/api/create`, { model: "parrot", from: tiny, system: "Polly." });
    const text = readFileSync(file, "utf8");
    expect(text.match(/\[models\.parrot\]/g)).toHaveLength(1);
    expect(text).not.toContain("Squawk.");
    await ollama.create({ model: "chick", from: "parrot:latest", parameters: { top_p: 0.9 } });
    const shown = await ollama.show({ model: "chick" });
    expect(shown.system).toBe("Polly.");
    expect(await promptTokens("chick", [user])).toBe(
      await promptTokens(tiny, [{ role: "system", content: "Polly." }, user]),
    );
  });

  test("a Modelfile's usual parameters (stop, num_ctx, num_predict, seed, penalties) are the model's defaults", async () => {
    const answer = (model: string, options: object, messages: object[] = [user]) =>
      ollama.chat({ model, messages: messages as any, stream: false, options });
    // The made model's penalties, which a request to the tiny model gives to answer as it does.
    const penalties = { repeat_last_n: 32, presence_penalty: 0.5, frequency_penalty: 0.25 };
    const never = "<|never|>";
    // The tiny model's greedy answer, whose last characters the made model stops at.
    const text = (await answer("tiny", { temperature: 0, num_predict: 8, ...penalties })).message.content;
    expect(text.length).toBeGreaterThan(3);
    const stop = text.slice(-2);
    await ollama.create({
      model: "bounded",
      from: "tiny",
      parameters: {
        stop: [stop, never],
        num_ctx: 64,
        num_predict: 3,
        seed: 42,
        ...penalties,
        // /api/chat's no-ops and off values: taken, nothing to keep.
        num_keep: 24,
        num_thread: 4,
        use_mmap: true,
        mirostat: 0,
        typical_p: 1,
        tfs_z: 1,
        mirostat_eta: 0.1,
      },
    });
    const entry = readFileSync(file, "utf8").split("[models.bounded]")[1]!;
    expect(entry).toContain(`stop = [ ${JSON.stringify(stop)}, "${never}" ]`);
    expect(entry).toContain("num_ctx = 64");
    expect(entry).not.toContain("num_keep");
    const shown = await ollama.show({ model: "bounded" });
    // As Ollama shows them: a name, spaces, the value (a stop string as Go's %#v quotes it, one line each).
    const parameters = shown.parameters.split("\n").map((line) => /^(\S+) +(.*)$/.exec(line)!.slice(1));
    expect(parameters).toEqual(
      expect.arrayContaining([
        ["stop", JSON.stringify(stop)],
        ["stop", `"${never}"`],
        ["num_ctx", "64"],
        ["num_predict", "3"],
        ["seed", "42"],
        ["repeat_last_n", "32"],
        ["presence_penalty", "0.5"],
        ["frequency_penalty", "0.25"],
      ]),
    );
    expect(shown.modelfile).toContain(`PARAMETER stop ${never}\n`);

    // num_predict: the answer's length where a request sets none; a request's own replaces it, -1 (no limit) too.
    const short = await answer("bounded", { temperature: 0, stop: [never] });
    expect(short.eval_count).toBe(3);
    for (const numPredict of [5, -1])
      expect((await answer("bounded", { temperature: 0, stop: [never], num_predict: numPredict })).eval_count).toBe(
        (await answer("tiny", { temperature: 0, num_predict: numPredict, num_ctx: 64, ...penalties })).eval_count,
      );
    expect(short.message.content).toBe(
      (await answer("tiny", { temperature: 0, num_predict: 3, ...penalties })).message.content,
    );
    // stop: its answer ends before the stop string; a request's own stop replaces the model's.
    const stopped = await answer("bounded", { temperature: 0, num_predict: 8 });
    expect(stopped.done_reason).toBe("stop");
    expect(stopped.message.content).toBe(text.slice(0, text.indexOf(stop)));
    expect((await answer("bounded", { temperature: 0, num_predict: 8, stop: [never] })).message.content).toBe(text);
    // num_ctx: a prompt longer than the model's context is refused, naming it; a request's own num_ctx replaces it.
    const long = [{ role: "user", content: "treasure ".repeat(80) }];
    await expect(answer("bounded", {}, long)).rejects.toThrow(
      /maximum context length is 64 tokens \(num_ctx of model 'bounded'\)/,
    );
    expect((await answer("bounded", { num_ctx: 512 }, long)).done).toBe(true);
    // seed: sampled as a request giving it gets it sampled.
    const sampled = { temperature: 1, num_predict: 8, stop: [never] };
    expect((await answer("bounded", sampled)).message.content).toBe(
      (await answer("tiny", { ...sampled, seed: 42, ...penalties })).message.content,
    );
    // A request's seed -1 (Ollama's random one) replaces it: at a temperature that makes every token
    // about as likely, eight tokens drawn again match the seeded ones by chance about never.
    const flat = { ...sampled, temperature: 50 };
    expect((await answer("bounded", { ...flat, seed: -1 })).message.content).not.toBe(
      (await answer("bounded", flat)).message.content,
    );
    // Every API: OpenAI's chat completions take the model's length too.
    const openai = await post(`${server.url}/v1/chat/completions`, {
      model: "bounded",
      messages: [user],
      temperature: 0,
      stop: [never],
    });
    expect(openai.json.usage.completion_tokens).toBe(3);
    // Over the API's own default: a completion that names no max_tokens gets the model's, not OpenAI's 16.
    const completion = (model: string) =>
      post(`${server.url}/v1/completions`, { model, prompt: "Once upon a time", temperature: 0, stop: [never] });
    expect((await completion("bounded")).json.usage.completion_tokens).toBe(3);
    expect((await completion("tiny")).json.usage.completion_tokens).toBe(16);
    // A model made from it inherits them.
    await ollama.create({ model: "bounded-child", from: "bounded", parameters: { temperature: 0.1 } });
    expect((await ollama.show({ model: "bounded-child" })).parameters).toMatch(/^num_ctx +64$/m);
  });

  test("mlx show lists a made model's parameters as /api/show does", async () => {
    await ollama.create({
      model: "listed",
      from: "tiny",
      system: SYSTEM,
      parameters: { stop: ["<|end|>", 'say "bye"'], num_ctx: 96, num_predict: 7, seed: 3, temperature: 0.4, top_k: 5 },
    });
    const api = (await ollama.show({ model: "listed" })).parameters.split("\n").map((line) => line.replace(/ +/, " "));
    expect(api).toContain('stop "say \\"bye\\""');
    const shown = await cliRunner(home)(["show", "listed"]);
    expect(shown).toMatchObject({ code: 0, stderr: "" });
    // Each a `parameter NAME  VALUE` row, in /api/show's order and quoting.
    const rows = shown.stdout
      .split("\n")
      .filter((line) => line.startsWith("parameter "))
      .map((line) => line.slice("parameter ".length).replace(/ +/, " "));
    expect(rows).toEqual(api);
    expect(rows).toEqual(
      expect.arrayContaining(["num_ctx 96", "num_predict 7", "seed 3", "temperature 0.4", "top_k 5"]),
    );
    expect(shown.stdout).toMatch(/^system +You are a pirate\.$/m);
  });

  test("the older create's `modelfile` text is read as mlx create reads a Modelfile", async () => {
    // As older clients send it (the official client passes the field on as it is).
    const modelfile = [
      "# a real Modelfile",
      "FROM tiny:latest",
      'PARAMETER stop "<|im_start|>"',
      'PARAMETER stop "<|im_end|>"',
      "PARAMETER num_ctx 128",
      "PARAMETER temperature 0.2",
      `SYSTEM """${SYSTEM}"""`,
      "MESSAGE user Ahoy?",
      "MESSAGE assistant Arr!",
    ].join("\n");
    await ollama.create({ model: "written", modelfile } as any);
    const shown = await ollama.show({ model: "written" });
    expect(shown.system).toBe(SYSTEM);
    expect(shown.parameters).toMatch(/^stop +"<\|im_start\|>"\nstop +"<\|im_end\|>"$/m);
    expect(shown.parameters).toMatch(/^num_ctx +128$/m);
    expect(shown.parameters).toMatch(/^temperature +0\.2$/m);
    expect(await promptTokens("written", [user])).toBe(
      await promptTokens(tiny, [{ role: "system", content: SYSTEM }, ...turns, user]),
    );
    // An absolute path is a path; the fields beside it replace what it says.
    const r = await post(`${server.url}/api/create`, {
      model: "written",
      modelfile: `FROM ${tiny}\nSYSTEM Old.\nPARAMETER top_k 5`,
      system: "New.",
      parameters: { top_p: 0.5 },
      stream: false,
    });
    expect(r).toMatchObject({ status: 200, json: { status: "success" } });
    const entry = readFileSync(file, "utf8").split("[models.written]")[1]!;
    expect(entry).toContain(`source = ${JSON.stringify(tiny)}\nsystem = "New."\n`);
    expect(entry).toContain("top_k = 5\ntop_p = 0.5\n");

    // A server has no folder to start a relative path from: a 400 saying to give an absolute one, nothing written.
    const before = readFileSync(file, "utf8");
    const refused = async (modelfile: string, message: string) => {
      const r = await post(`${server.url}/api/create`, { model: "bad", modelfile });
      expect(r.status).toBe(400);
      expect(r.json.error).toContain(message);
      expect(readFileSync(file, "utf8")).toBe(before);
    };
    await refused(
      "FROM ./tiny\n",
      "modelfile:1: FROM ./tiny is a relative path, which the server cannot resolve: give an absolute path or a model's name",
    );
    await refused(`FROM tiny\nADAPTER adapter\n`, "modelfile:2: ADAPTER adapter is a relative path");
    await refused(`FROM @sha256:${"0".repeat(64)}\n`, "names an uploaded blob");
    await refused(`FROM tiny\nTEMPLATE {{ .Prompt }}\n`, "modelfile:2: TEMPLATE is a Go template");
    await refused("SYSTEM hi\n", "no FROM line");
    await refused(`FROM tiny\nPARAMETER mirostat 1\n`, "parameter 'mirostat' is not supported here");
  });

  test("/api/show's modelfile reads back as the same model, whatever its stop strings and texts hold", async () => {
    // Written as people write them: bare, in a """ block, and "quoted" with \" (over lines too).
    const modelfile = [
      "FROM tiny",
      'PARAMETER stop "\\"\\"\\""',
      'PARAMETER stop a"""b',
      'PARAMETER stop """ spaced """',
      'PARAMETER stop """two',
      'lines"""',
      'PARAMETER stop "ends \\"quoted\\""',
      'PARAMETER stop "over a',
      '\\"\\"\\" line\\\\"',
      "PARAMETER stop <|end|>",
      'SYSTEM "Write \\"\\"\\"docstrings\\"\\"\\".',
      'Always."',
      'MESSAGE user "A \\"\\"\\" here"',
      "MESSAGE assistant ok",
    ].join("\n");
    const stops = ['"""', 'a"""b', " spaced ", "two\nlines", 'ends "quoted"', 'over a\n""" line\\', "<|end|>"];
    const system = 'Write """docstrings""".\nAlways.';
    await ollama.create({ model: "quoted", modelfile } as any);
    const shown = await ollama.show({ model: "quoted" });
    expect(shown.parameters).toBe(stops.map((stop) => `${"stop".padEnd(30)} ${JSON.stringify(stop)}`).join("\n"));
    expect(shown.system).toBe(system);
    // A stop string a line holds as it is is written bare, as Ollama writes it.
    expect(shown.modelfile).toContain("\nPARAMETER stop <|end|>\n");

    // Made again from what /api/show wrote: the same entry (but for FROM, which names the files), shown the same.
    await ollama.create({ model: "quoted-again", modelfile: shown.modelfile } as any);
    const entry = (name: string) =>
      readFileSync(file, "utf8")
        .split(`[models.${name}]\n`)[1]!
        .split("\n[")[0]!
        .replace(/^source = .*\n/, "");
    expect(entry("quoted-again")).toBe(entry("quoted"));
    expect(entry("quoted")).toContain('{ role = "user", content = "A \\"\\"\\" here" }');
    const again = await ollama.show({ model: "quoted-again" });
    expect([again.modelfile, again.parameters, again.system]).toEqual([shown.modelfile, shown.parameters, system]);
  });

  test("an adapter's directory is the model's adapter", async () => {
    const { hidden, heads, headDim } = tinyDims;
    const adapter = join(root, "adapter");
    writeRandomAdapter(adapter, { layers: lastLayers(2, 2, { "self_attn.q_proj": [hidden, heads * headDim] }) });
    await ollama.create({ model: "tuned", from: "tiny", adapters: { "adapters.safetensors": adapter } });
    expect((await ollama.show({ model: "tuned" })).modelfile).toContain(`ADAPTER ${adapter}\n`);
    expect(await promptTokens("tuned", [user])).toBeGreaterThan(0);
  });

  test("what it cannot make is a 4xx in Ollama's shape, and nothing is written", async () => {
    const before = readFileSync(file, "utf8");
    const refused = async (body: object, status: number, message: RegExp) => {
      const r = await post(`${server.url}/api/create`, { model: "bad", from: "tiny", ...body });
      expect(r.status).toBe(status);
      expect(r.json.error).toMatch(message);
      expect(readFileSync(file, "utf8")).toBe(before);
    };
    await refused({ from: "nothing-here" }, 404, /model 'nothing-here' not found/);
    await refused({ from: undefined }, 400, /'from' is required/);
    await refused({ parameters: { temprature: 1 } }, 400, /unknown parameter 'temprature'/);
    await refused({ parameters: { mirostat: 2 } }, 400, /parameter 'mirostat' is not supported here \(only 0/);
    await refused({ parameters: { typical_p: 0.5 } }, 400, /parameter 'typical_p' is not supported here/);
    await refused({ parameters: { num_ctx: 0 } }, 400, /num_ctx must be a whole number >= 1/);
    await refused({ parameters: { num_predict: 2.5 } }, 400, /num_predict must be a whole number >= -2/);
    await refused({ parameters: { stop: [""] } }, 400, /parameter 'stop' must be a string or a list of strings/);
    await refused({ parameters: { num_keep: "many" } }, 400, /parameter 'num_keep' must be a whole number/);
    await refused({ parameters: { presence_penalty: 3 } }, 400, /presence_penalty' must be a number in \[-2, 2\]/);
    await refused({ parameters: { top_p: 2 } }, 400, /parameter 'top_p' must be a number in \(0, 1\]/);
    await refused({ template: "{{ .Prompt }}" }, 400, /'template' is a Go template/);
    await refused({ quantize: "q4_K_M" }, 400, /'quantize' is not supported/);
    await refused({ files: { "model.gguf": `sha256:${"0".repeat(64)}` } }, 400, /'files' names blobs/);
    await refused({ adapters: { "a.gguf": `sha256:${"0".repeat(64)}` } }, 400, /uploaded blob/);
    await refused({ adapters: { a: join(root, "no-such-adapter") } }, 400, /is not a directory/);
    await refused({ messages: [{ role: "system", content: "x" }] }, 400, /must be "user" or "assistant"/);
    await refused({ model: "tiny", from: "pirate" }, 400, /'tiny' is a stored model/);
    await refused({ model: "smollm2" }, 400, /'smollm2' is an alias models.toml ships/);
    await refused({ model: "loop", from: "loop" }, 400, /cannot be made from itself/);
    await refused({ model: 'a "quoted" name' }, 400, /is not a model name/);
    // An adapter on a model whose source has one: the aliases it would make do not load.
    await refused({ from: "tuned", adapters: { a: join(root, "adapter") } }, 400, /both have an adapter/);
    // The official client's errors carry the message.
    await expect(ollama.create({ model: "bad", from: "nothing-here" })).rejects.toThrow(/not found/);
  });

  test("a server that takes no paths from requests makes no model from one, nor with an adapter's", async () => {
    const closed = serve({ requestPaths: false });
    try {
      const before = readFileSync(file, "utf8");
      const fromPath = await post(`${closed.url}/api/create`, { model: "sneaky", from: tiny });
      expect(fromPath.status).toBe(404);
      const adapter = await post(`${closed.url}/api/create`, {
        model: "sneaky",
        from: "tiny",
        adapters: { a: join(root, "adapter") },
      });
      expect(adapter.status).toBe(400);
      expect(adapter.json.error).toContain("takes no paths");
      expect(readFileSync(file, "utf8")).toBe(before);
      // A stored model by its name it does make from.
      expect((await post(`${closed.url}/api/create`, { model: "sneaky", from: "tiny", stream: false })).status).toBe(
        200,
      );
    } finally {
      closed.stop();
    }
  });

  test("mlx list lists the made models as /api/tags does: the base's format, size and quantization, made from it", async () => {
    const tags = (await ollama.list()).models.filter((m) => m.details.parent_model !== "");
    expect(tags.map((m) => m.name)).toEqual(expect.arrayContaining(["pirate", "parrot", "chick", "tuned"]));
    const listed = await cliRunner(home)(["list", "--json"]);
    expect(listed).toMatchObject({ code: 0, stderr: "" });
    const rows = JSON.parse(listed.stdout) as { name: string; parentModel?: string; totalBytes?: number }[];
    for (const tag of tags)
      expect(rows.find((r) => r.name === tag.name)).toMatchObject({
        parentModel: tag.details.parent_model,
        format: tag.details.format,
        ...(tag.size > 0 ? { totalBytes: tag.size } : {}),
      });
    // The table: a FROM column naming what each is made from.
    const table = await cliRunner(home)(["list"]);
    expect(table.stdout).toMatch(/^NAME +FORMAT +QUANTIZATION +SIZE +LAST USED +FROM$/m);
    expect(table.stdout).toMatch(/^pirate +mlx +.* +tiny$/m);
    expect(table.stdout).toMatch(/^tiny +mlx +.* +-$/m);
  });

  test("/api/copy of a made model copies its entry", async () => {
    await ollama.copy({ source: "pirate:latest", destination: "corsair" });
    const shown = await ollama.show({ model: "corsair" });
    expect(shown.system).toBe(SYSTEM);
    expect(shown.parameters).toMatch(/^top_k +7$/m);
    expect(await promptTokens("corsair", [user])).toBe(await promptTokens("pirate", [user]));
    // Not over a stored model.
    await expect(ollama.copy({ source: "pirate", destination: "tiny" })).rejects.toThrow(/'tiny' is a stored model/);
  });

  test("/api/delete of a made model removes its entry alone", async () => {
    await ollama.create({ model: "doomed", from: "tiny", system: "Bye." });
    await ollama.delete({ model: "doomed:latest" });
    const text = readFileSync(file, "utf8");
    expect(text).not.toContain("doomed");
    expect(text.startsWith(HAND_WRITTEN)).toBe(true);
    expect(text).toContain("[models.pirate]");
    const names = (await ollama.list()).models.map((m) => m.name);
    expect(names).toContain("tiny");
    expect(names).not.toContain("doomed");
    await expect(ollama.show({ model: "doomed" })).rejects.toThrow();
    // A remote provider's entry is the operator's configuration, not a model made here: it stays.
    expect((await fetch(`${server.url}/api/delete`, { method: "DELETE", body: '{"model": "far"}' })).status).toBe(404);
    expect(readFileSync(file, "utf8")).toContain("[models.far]");
    // One another is made from stays: that one would name nothing.
    const before = readFileSync(file, "utf8");
    const r = await fetch(`${server.url}/api/delete`, { method: "DELETE", body: JSON.stringify({ model: "parrot" }) });
    expect(r.status).toBe(400);
    expect(((await r.json()) as { error: string }).error).toContain("'chick' is made from 'parrot'");
    expect(readFileSync(file, "utf8")).toBe(before);
    // Nor the stored model one is made from by its name.
    const base = await fetch(`${server.url}/api/delete`, { method: "DELETE", body: JSON.stringify({ model: "tiny" }) });
    expect(base.status).toBe(400);
    expect(((await base.json()) as { error: string }).error).toMatch(/^'[^']+' is made from 'tiny'/);
    expect((await ollama.list()).models.map((m) => m.name)).toContain("tiny");
  });

  test("a made model deleted while loaded answers no more, nor is listed as loaded or served, by either name", async () => {
    await ollama.create({ model: "sunk", from: "tiny", system: "Bye." });
    // Loaded by both names an Ollama client uses, beside the model it is made from (one copy of the weights).
    for (const model of ["tiny", "sunk", "sunk:latest"])
      await ollama.chat({ model, messages: [user], stream: false, options: once });
    await ollama.delete({ model: "sunk" });
    // Listed no more, and a 404; the model it was made from stays loaded.
    const loaded = await expectGone("sunk");
    // A model loaded by the deleted name alone is unloaded with it (it is idle).
    for (const name of loaded) await ollama.generate({ model: name, prompt: "", keep_alive: 0 });
    await ollama.create({ model: "sunk", from: "tiny" });
    await ollama.chat({ model: "sunk", messages: [user], stream: false, options: once });
    expect((await ollama.ps()).models.map((m) => m.name)).toEqual(["sunk"]);
    await ollama.delete({ model: "sunk" });
    expect(server.state.models.loaded).toEqual([]);
  });

  test("a made model `mlx rm` removed in another process while loaded answers no more, nor is listed, as /api/delete's", async () => {
    await ollama.create({ model: "scuttled", from: "tiny", system: "Bye." });
    for (const model of ["tiny", "scuttled", "scuttled:latest"])
      await ollama.chat({ model, messages: [user], stream: false, options: once });
    const removed = await cliRunner(home)(["rm", "-y", "scuttled"]);
    expect(removed.code).toBe(0);
    // Listed no more, before any request names it.
    const loaded = await expectGone("scuttled");
    // Loaded by the removed name alone (it has its own settings: another entry), it is unloaded with it.
    for (const name of loaded) await ollama.generate({ model: name, prompt: "", keep_alive: 0 });
    await ollama.create({ model: "scuttled", from: "tiny", parameters: { num_ctx: 128 } });
    await ollama.chat({ model: "scuttled", messages: [user], stream: false, options: once });
    expect((await ollama.ps()).models.map((m) => m.name)).toEqual(["scuttled"]);
    expect((await cliRunner(home)(["rm", "-y", "scuttled"])).code).toBe(0);
    expect((await ollama.ps()).models).toEqual([]);
    expect(server.state.models.loaded).toEqual([]);
  });

  test("a loaded made model's context is its num_ctx, as /api/ps, mlx ps, /v1/models and /stats report it", async () => {
    await ollama.create({ model: "narrow", from: "tiny", parameters: { num_ctx: 64 } });
    await ollama.create({ model: "wide", from: "tiny", parameters: { num_ctx: 4096 } });
    /** The context each report gives for the tiny model's files, loaded by a request to `model` (they unloaded first). */
    const reported = async (model: string) => {
      for (const { name } of (await ollama.ps()).models)
        await ollama.generate({ model: name, prompt: "", keep_alive: 0 });
      await ollama.chat({ model, messages: [user], stream: false, options: once });
      // The official client's type lacks newer Ollama's context_length.
      const [ps] = (await ollama.ps()).models as (ModelResponse & { context_length: number })[];
      const cli = JSON.parse((await cliRunner(home)(["ps", "--url", server.url, "--json"])).stdout);
      const openai = (await (await fetch(`${server.url}/v1/models/${model}`)).json()) as { max_model_len: number };
      const stats = (await (await fetch(`${server.url}/stats`)).json()) as {
        models: { name: string; context_length: number }[];
      };
      // Listed by the name that loaded it, with what requests naming it get.
      expect([ps!.name, cli[0].name, stats.models[0]!.name]).toEqual([model, model, model]);
      return [ps!.context_length, cli[0].context_length, openai.max_model_len, stats.models[0]!.context_length];
    };
    expect(await reported("narrow")).toEqual([64, 64, 64, 64]);
    // A num_ctx past the model's own context gets the model's, as each request does.
    expect(await reported("wide")).toEqual([512, 512, 512, 512]);
    expect(await reported("tiny")).toEqual([512, 512, 512, 512]);
  });
});
