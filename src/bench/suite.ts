// Prompt-suite mode of `mlx bench`: a file of prompts (plain lines, or JSON lines with
// {prompt, expect_regex?, expect_schema?}), each answered greedily through the chat
// template, checked against its expectation, with the speed figures of every answer.
import { existsSync, readFileSync } from "node:fs";
import { basename, dirname, resolve } from "node:path";
import type { ValidateFunction } from "ajv";
import { compileAnswerSchema } from "../engine/json-schema";
import { fileErrorReason } from "../format";
import { complete, soloScheduler, type CompletionResult } from "../engine/generate";
import { defaultSampling } from "../engine/sampling";
import type { LoadedModel } from "../models/load";
import type { RemoteModel } from "../providers";
import { describeModel, speculationFigures, type ModelInfo, type SpeculationFigures } from "./model";
import { remoteAnswer, remoteModelInfo } from "./remote";
import { summarize, type Summary } from "./stats";

export interface Expectation {
  regex?: { source: string; test: RegExp };
  schema?: { source: string; validate: ValidateFunction };
}

export interface SuitePrompt extends Expectation {
  /** 1-based line in the prompt file. */
  line: number;
  prompt: string;
}

export interface PromptOutcome {
  line: number;
  text: string;
  /** undefined when the prompt has no expectation. */
  passed: boolean | undefined;
  reasons: string[];
  promptTokens: number;
  generatedTokens: number;
  promptTokensPerSecond: number;
  /** NaN for an answer of one token: its first token comes from the prefill, nothing was decoded. */
  generationTokensPerSecond: number;
  timeToFirstTokenSeconds: number;
}

export interface SuiteModelResult extends ModelInfo {
  prompts: PromptOutcome[];
  passed: number;
  /** Prompts that had an expectation. */
  checked: number;
  promptTokensPerSecond: Summary;
  generationTokensPerSecond: Summary;
  timeToFirstTokenSeconds: Summary;
  peakMemoryBytes: number;
  /** Draft tokens proposed and kept over the prompts, when the model speculates. */
  speculation?: SpeculationFigures;
}

export class PromptFileError extends Error {
  override name = "PromptFileError";
}

/** `/pattern/flags` or a bare pattern. */
export function compileRegex(source: string, where: string): RegExp {
  const slashed = /^\/(.*)\/([dgimsuvy]*)$/s.exec(source);
  try {
    return slashed ? new RegExp(slashed[1]!, slashed[2]) : new RegExp(source);
  } catch (error) {
    throw new PromptFileError(
      `${where}: invalid regular expression ${JSON.stringify(source)}: ${(error as Error).message}`,
    );
  }
}

/** Compiles a prompt file's JSON schema under its own draft; a schema that does not compile names where it is. */
export function compileSchema(schema: unknown, where: string): ValidateFunction {
  if (typeof schema !== "object" && typeof schema !== "boolean")
    throw new PromptFileError(`${where}: a JSON schema must be an object (got ${JSON.stringify(schema)})`);
  try {
    return compileAnswerSchema(schema as object | boolean, { allErrors: true });
  } catch (error) {
    throw new PromptFileError(`${where}: invalid JSON schema: ${(error as Error).message}`);
  }
}

/** A prompt or schema file's text, or a one-line error that names it: missing, a directory, unreadable. */
function readUserFile(path: string, what: string): string {
  if (!existsSync(path)) throw new PromptFileError(`${what} not found: ${path}`);
  try {
    return readFileSync(path, "utf8");
  } catch (error) {
    throw new PromptFileError(`cannot read ${what} ${path}: ${fileErrorReason(error)}`);
  }
}

export function readSchemaFile(path: string): { source: string; validate: ValidateFunction } {
  const text = readUserFile(path, "schema file");
  let schema: unknown;
  try {
    schema = JSON.parse(text);
  } catch (error) {
    throw new PromptFileError(`${path}: not valid JSON: ${(error as Error).message}`);
  }
  return { source: basename(path), validate: compileSchema(schema, path) };
}

const knownKeys = new Set(["prompt", "expect_regex", "expect_schema", "id", "name"]);

/**
 * Reads a prompt file: each non-empty line is a prompt, or, when it starts with `{`, a JSON
 * object {prompt, expect_regex?, expect_schema?} (a schema inline, or a path relative to the
 * file). `defaults` (--expect-regex, --expect-schema) applies to the prompts that give no
 * expectation of their own.
 */
export function parsePromptFile(path: string, defaults: Expectation = {}): SuitePrompt[] {
  const lines = readUserFile(path, "prompt file").split(/\r?\n/);
  const prompts: SuitePrompt[] = [];
  lines.forEach((raw, i) => {
    const line = i + 1;
    const where = `${path} line ${line}`;
    const text = raw.trim();
    if (!text) return;
    if (!text.startsWith("{")) {
      prompts.push({ line, prompt: text, ...defaults });
      return;
    }
    let entry: unknown;
    try {
      entry = JSON.parse(text);
    } catch (error) {
      throw new PromptFileError(`${where}: not valid JSON: ${(error as Error).message}`);
    }
    const e = entry as Record<string, unknown>;
    if (typeof e.prompt !== "string" || !e.prompt.trim())
      throw new PromptFileError(`${where}: "prompt" must be a non-empty string`);
    const unknown = Object.keys(e).filter((k) => !knownKeys.has(k));
    if (unknown.length > 0)
      throw new PromptFileError(
        `${where}: unknown key ${unknown.map((k) => `"${k}"`).join(", ")} (expected prompt, expect_regex, expect_schema)`,
      );
    // A prompt with an expectation of its own replaces the defaults; one without takes them.
    const own = e.expect_regex !== undefined || e.expect_schema !== undefined;
    const p: SuitePrompt = own ? { line, prompt: e.prompt } : { line, prompt: e.prompt, ...defaults };
    if (e.expect_regex !== undefined) {
      if (typeof e.expect_regex !== "string") throw new PromptFileError(`${where}: "expect_regex" must be a string`);
      p.regex = { source: e.expect_regex, test: compileRegex(e.expect_regex, where) };
    }
    if (e.expect_schema !== undefined) {
      if (typeof e.expect_schema === "string") {
        p.schema = readSchemaFile(resolve(dirname(path), e.expect_schema));
      } else {
        p.schema = { source: "inline schema", validate: compileSchema(e.expect_schema, where) };
      }
    }
    prompts.push(p);
  });
  if (prompts.length === 0) throw new PromptFileError(`${path}: no prompts (empty file)`);
  return prompts;
}

/** The JSON value in an answer: the whole text, a ```json fence, or the outermost {...} / [...]. */
export function extractJson(text: string): { value?: unknown; found: boolean } {
  const candidates = [text.trim()];
  const fence = /```(?:json)?\s*\n([\s\S]*?)```/.exec(text);
  if (fence) candidates.push(fence[1]!.trim());
  // The outermost first: of `[{"city": "Paris"}]` in prose, the array, not the object inside it.
  const spans = (
    [
      ["{", "}"],
      ["[", "]"],
    ] as const
  )
    .map(([open, close]) => [text.indexOf(open), text.lastIndexOf(close)] as const)
    .filter(([a, b]) => a >= 0 && b > a)
    .sort((x, y) => x[0] - y[0]);
  for (const [a, b] of spans) candidates.push(text.slice(a, b + 1));
  for (const c of candidates) {
    try {
      return { value: JSON.parse(c), found: true };
    } catch {
      // try the next candidate
    }
  }
  return { found: false };
}

export function checkAnswer(text: string, e: Expectation): { passed: boolean | undefined; reasons: string[] } {
  if (!e.regex && !e.schema) return { passed: undefined, reasons: [] };
  const reasons: string[] = [];
  if (e.regex) {
    // A /g or /y expression keeps where its last match ended: each answer is searched from its start.
    e.regex.test.lastIndex = 0;
    if (!e.regex.test.test(text)) reasons.push(`does not match ${e.regex.source}`);
  }
  if (e.schema) {
    const json = extractJson(text);
    if (!json.found) reasons.push("no JSON in the answer");
    else if (!e.schema.validate(json.value)) {
      const first = e.schema.validate.errors?.[0];
      reasons.push(
        `JSON does not match ${e.schema.source}${first ? `: ${first.instancePath || "/"} ${first.message}` : ""}`,
      );
    }
  }
  return { passed: reasons.length === 0, reasons };
}

export interface SuiteOptions {
  maxTokens: number;
  onProgress?: (message: string) => void;
}

/** One answer, greedy, through the chat template: the whole text and its figures. */
type Answer = (prompt: string, maxTokens: number) => Promise<CompletionResult>;

/**
 * The suite on one model, local or remote alike: a warm-up, then each prompt answered and
 * judged, with the speed figures of its answer.
 */
async function answerPrompts(
  name: string,
  prompts: SuitePrompt[],
  o: SuiteOptions,
  answer: Answer,
): Promise<{ outcomes: PromptOutcome[]; peak: number; drafts: { drafted: number; accepted: number } }> {
  const say = o.onProgress ?? (() => {});
  const outcomes: PromptOutcome[] = [];
  let peak = 0;
  const drafts = { drafted: 0, accepted: 0 };
  say(`${name}: warm-up`);
  await answer("Hi", Math.min(o.maxTokens, 2));
  for (const [i, p] of prompts.entries()) {
    let r: CompletionResult;
    try {
      r = await answer(p.prompt, o.maxTokens);
    } catch (error) {
      // Which of the file's prompts the model could not answer (too long for its context, ...).
      throw new Error(`prompt on line ${p.line}: ${error instanceof Error ? error.message : String(error)}`, {
        cause: error,
      });
    }
    const check = checkAnswer(r.text, p);
    // The tokens prefilled are those timed (a remote provider may hold the chat template's start
    // in its prefix cache); none counted (a provider that sends no usage) is no sample, not 0 tokens/s.
    const prefilled = r.stats.promptTokens - r.stats.cachedTokens;
    const promptSpeed = prefilled > 0 ? r.stats.promptTokensPerSecond : Number.NaN;
    // An answer of one token has no generation speed (the first token comes from the prefill):
    // no sample (null, an empty cell), not the 0 tokens/s the stats hold for it.
    const generationSpeed = r.stats.generatedTokens > 1 ? r.stats.generationTokensPerSecond : Number.NaN;
    peak = Math.max(peak, r.stats.peakMemoryBytes);
    drafts.drafted += r.stats.draftedTokens;
    drafts.accepted += r.stats.acceptedTokens;
    outcomes.push({
      line: p.line,
      text: r.text,
      ...check,
      promptTokens: prefilled,
      generatedTokens: r.stats.generatedTokens,
      promptTokensPerSecond: promptSpeed,
      generationTokensPerSecond: generationSpeed,
      timeToFirstTokenSeconds: r.stats.timeToFirstTokenSeconds,
    });
    const verdict =
      check.passed === undefined ? "" : check.passed ? ", passed" : `, failed (${check.reasons.join("; ")})`;
    say(
      `${name}: prompt ${i + 1}/${prompts.length}: ${r.stats.generatedTokens} tokens${Number.isFinite(generationSpeed) ? `, ${generationSpeed.toFixed(2)} tokens/s` : ""}${verdict}`,
    );
  }
  return { outcomes, peak, drafts };
}

/** A model's result: its pass count over the prompts that had an expectation, its speeds over all of them. */
function suiteResult(
  info: ModelInfo,
  outcomes: PromptOutcome[],
  peakMemoryBytes: number,
  speculation?: SpeculationFigures,
): SuiteModelResult {
  const checked = outcomes.filter((o) => o.passed !== undefined);
  return {
    ...info,
    prompts: outcomes,
    passed: checked.filter((o) => o.passed).length,
    checked: checked.length,
    promptTokensPerSecond: summarize(outcomes.map((o) => o.promptTokensPerSecond)),
    generationTokensPerSecond: summarize(outcomes.map((o) => o.generationTokensPerSecond)),
    timeToFirstTokenSeconds: summarize(outcomes.map((o) => o.timeToFirstTokenSeconds)),
    peakMemoryBytes,
    speculation,
  };
}

export async function runSuite(
  lm: LoadedModel,
  name: string,
  prompts: SuitePrompt[],
  o: SuiteOptions,
): Promise<SuiteModelResult> {
  const sampling = { ...defaultSampling, temperature: 0 };
  const scheduler = soloScheduler(lm);
  try {
    const { outcomes, peak, drafts } = await answerPrompts(name, prompts, o, (prompt, maxTokens) =>
      complete(scheduler, { prompt: { kind: "text", text: prompt, template: true }, sampling, maxTokens }),
    );
    return suiteResult(describeModel(lm, name), outcomes, peak, speculationFigures(lm, drafts));
  } finally {
    scheduler.dispose();
  }
}

/**
 * The suite on a remote model (models.toml provider), judged as a local one: its answers, and
 * its speeds timed from the stream with the token counts of the provider's usage. Its memory is
 * the provider's, unseen from here (NaN).
 */
export async function runRemoteSuite(
  remote: RemoteModel,
  name: string,
  prompts: SuitePrompt[],
  o: SuiteOptions,
): Promise<SuiteModelResult> {
  const { outcomes } = await answerPrompts(name, prompts, o, (prompt, maxTokens) =>
    remoteAnswer(remote, prompt, maxTokens),
  );
  return suiteResult(remoteModelInfo(remote, name), outcomes, Number.NaN);
}
