// A model's sampling defaults on `mlx serve`: what its generation_config.json recommends (as
// vLLM's server applies it), and what its alias in models.toml sets, fill in what a request
// leaves out; the request's own values win. Tiny random-weight model: at temperature 1 two seeds
// give two answers, at temperature 0 (or top_k 1) every seed gives the greedy one.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { cpSync, mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { RunningServer } from "../src/server/app";
import { loadAliases } from "../src/store/aliases";
import { post, serve } from "./helpers/serve";
import { writeTinyModel } from "./helpers/tiny-model";

const savedHome = process.env.MLX_HOME;
let server: RunningServer;
let plain: string;
let recommended: string;
let home: string;

beforeAll(() => {
  const root = mkdtempSync(join(tmpdir(), "mlx-sampling-defaults-"));
  home = join(root, "home");
  process.env.MLX_HOME = home;
  plain = join(root, "plain");
  writeTinyModel(plain, { contextLength: 512 });
  // The same weights, with a maker's recommendation of greedy decoding and values out of range
  // (min_p 1.5, past 1, which requests refuse).
  recommended = join(root, "recommended");
  cpSync(plain, recommended, { recursive: true });
  writeFileSync(join(recommended, "generation_config.json"), JSON.stringify({ temperature: 0, top_p: 7, min_p: 1.5 }));
  writeAliases(
    `[models.cold]\nsource = "${plain}"\ntop_k = 1\n\n[models.warm]\nsource = "${recommended}"\ntemperature = 1\n\n` +
      `[models.sticky]\nsource = "${plain}"\nrepetition_penalty = 1.2\n`,
  );
  server = serve({});
}, 60_000);

afterAll(() => {
  server.stop();
  if (savedHome === undefined) delete process.env.MLX_HOME;
  else process.env.MLX_HOME = savedHome;
});

function writeAliases(text: string): void {
  mkdirSync(home, { recursive: true });
  writeFileSync(join(home, "models.toml"), text);
}

/** The answer to one prompt, as the OpenAI API gives it, with these sampling fields. */
async function answer(model: string, fields: object): Promise<string> {
  const r = await post(`${server.url}/v1/completions`, { model, prompt: "Once upon a time", max_tokens: 8, ...fields });
  expect(r.status).toBe(200);
  return r.json.choices[0].text;
}

describe("a model's sampling defaults", () => {
  test("its generation_config.json fills in what a request leaves out; the request's values win", async () => {
    const greedy = await answer(plain, { temperature: 0 });
    // OpenAI's default, temperature 1, where the model recommends nothing: two seeds, two answers.
    expect(await answer(plain, { seed: 1 })).not.toBe(await answer(plain, { seed: 2 }));
    // Its recommendation (temperature 0; top_p 7 and min_p 1.5 are out of range and left out): greedy, whatever the seed.
    expect(await answer(recommended, { seed: 1 })).toBe(greedy);
    expect(await answer(recommended, { seed: 2 })).toBe(greedy);
    expect(await answer(recommended, { seed: 1, temperature: 1 })).toBe(await answer(plain, { seed: 1 }));
  });

  test("a Responses object gives the temperature its answer was sampled at: the model's where the request sets none", async () => {
    const url = `${server.url}/v1/responses`;
    const recommendedAt = await post(url, { model: recommended, input: "Hi", max_output_tokens: 1 });
    expect(recommendedAt.status).toBe(200);
    expect(recommendedAt.json.temperature).toBe(0);
    expect((await post(url, { model: "warm", input: "Hi", max_output_tokens: 1 })).json.temperature).toBe(1);
    expect(
      (await post(url, { model: recommended, input: "Hi", max_output_tokens: 1, temperature: 0.5 })).json.temperature,
    ).toBe(0.5);
    expect((await post(url, { model: plain, input: "Hi", max_output_tokens: 1 })).json).toMatchObject({
      temperature: 1,
      top_p: 1,
    });
  });

  test("an alias's values in models.toml come before the model's own", async () => {
    const greedy = await answer(plain, { temperature: 0 });
    expect(await answer("cold", { seed: 3 })).toBe(greedy);
    expect(await answer("cold", { seed: 3, top_k: 0 })).toBe(await answer(plain, { seed: 3 }));
    // The alias's temperature 1 over its model's recommended 0.
    expect(await answer("warm", { seed: 1 })).toBe(await answer(plain, { seed: 1 }));
  });

  test("an alias named with Ollama's default tag (cold:latest, as Ollama's clients send it) gets its values too", async () => {
    const greedy = await answer(plain, { temperature: 0 });
    for (const seed of [3, 4]) expect(await answer("cold:latest", { seed })).toBe(greedy);
    const shown = (await post(`${server.url}/api/show`, { model: "cold:latest" })).json;
    expect(shown.modelfile).toBe(`FROM ${plain}\nPARAMETER top_k 1\n`);
  });

  test("Ollama's /api/show gives them as a Modelfile's parameters", async () => {
    const cold = (await post(`${server.url}/api/show`, { model: "cold" })).json;
    expect(cold.parameters).toBe(`top_k${" ".repeat(25)} 1`);
    expect(cold.modelfile).toBe(`FROM ${plain}\nPARAMETER top_k 1\n`);
    const warm = (await post(`${server.url}/api/show`, { model: "warm" })).json;
    expect(warm.parameters.split("\n").map((line: string) => line.split(/ +/))).toEqual([["temperature", "1"]]);
    expect((await post(`${server.url}/api/show`, { model: plain })).json.parameters).toBe("");
  });

  test("/api/show names each by Ollama's own PARAMETER name: models.toml's repetition_penalty is repeat_penalty", async () => {
    const sticky = (await post(`${server.url}/api/show`, { model: "sticky" })).json;
    expect(sticky.modelfile).toBe(`FROM ${plain}\nPARAMETER repeat_penalty 1.2\n`);
    expect(sticky.parameters.split(/ +/)).toEqual(["repeat_penalty", "1.2"]);
  });

  test("a value out of range in models.toml is an error naming the file, the line and the range", () => {
    for (const [line, error] of [
      ["temperature = -1", "temperature must be a number >= 0"],
      ["top_p = 0", "top_p must be a number in (0, 1]"],
      ["top_k = 2.5", "top_k must be a whole number >= 0"],
      ['repetition_penalty = "1.1"', "repetition_penalty must be a number > 0"],
      // Values a request would refuse: every request to the model was a 400 naming a field it never sent.
      ["min_p = 1.5", "min_p must be a number in [0, 1]"],
      ["temperature = inf", "temperature must be a number >= 0"],
      ["repetition_penalty = inf", "repetition_penalty must be a number > 0"],
    ]) {
      writeAliases(`[models.bad]\nsource = "${plain}"\n${line}\n`);
      expect(() => loadAliases()).toThrow(`${join(home, "models.toml")}:1: model 'bad': ${error}`);
    }
    writeAliases(`[models.cold]\nsource = "${plain}"\ntop_k = 1\n`);
  });
});
