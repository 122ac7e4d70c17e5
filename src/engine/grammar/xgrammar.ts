// The xgrammar instance. The WASM build aborts on a schema it refuses, and every abort leaks
// part of its stack: after some dozens the instance is broken. So we evaluate the library
// ourselves, count aborts, and move to a fresh instance well before that (matchers made on
// the old one keep working: they never abort).
import type * as XG from "@mlc-ai/web-xgrammar";
// The library's text, evaluated by us (see loadInstance): one WASM instance per evaluation.
import xgrammarSource from "@mlc-ai/web-xgrammar/lib/index.js" with { type: "text" };
import { SchemaError } from "../../errors";

type Xg = typeof XG;

/** The parts of xgrammar's embind module we call ourselves (see newTokenizerInfo). */
interface Binding {
  vecStringFromJSArray(values: string[]): { delete(): void };
  vecIntFromJSArray(values: number[]): { delete(): void };
  TokenizerInfo: new (...args: unknown[]) => unknown;
  GrammarMatcher: new (...args: unknown[]) => unknown;
}

export interface Instance {
  xg: Xg;
  binding: Binding;
  /** The instance's linear memory, to read bitmasks without a copy through embind. */
  memory: WebAssembly.Memory | undefined;
  /** Set while a call's diagnostics are collected instead of printed. */
  log: string[] | undefined;
  aborts: number;
  /** Whether reading a bitmask straight from memory was checked to agree with the library. */
  directBitmask: boolean;
}

const MAX_ABORTS = 4;
let current: Promise<Instance> | undefined;
let loading: Promise<unknown> = Promise.resolve();
/** Told when guarded retires an instance: what was made on it is not to be handed out again. */
const retiredListeners: (() => void)[] = [];

/** Calls `listener` each time an instance is retired (see guarded). */
export function onInstanceRetired(listener: () => void): void {
  retiredListeners.push(listener);
}

/** Loads xgrammar's WASM once (later calls return at once). Everything else awaits it too. */
export async function initGrammar(): Promise<void> {
  await instance();
}

export function instance(): Promise<Instance> {
  current ??= loadInstance();
  return current;
}

async function loadInstance(): Promise<Instance> {
  // One load at a time: it briefly patches globals to catch the instance's memory and stderr.
  const previous = loading;
  let done!: () => void;
  loading = new Promise<void>((resolve) => (done = resolve));
  await previous;
  const exports = {} as Xg;
  const inst: Instance = {
    xg: exports,
    binding: undefined as unknown as Binding,
    memory: undefined,
    log: undefined,
    aborts: 0,
    directBitmask: false,
  };
  const originalLog = console.log;
  const originalError = console.error;
  const originalInstantiate = WebAssembly.instantiate;
  try {
    new Function(
      "exports",
      "module",
      "require",
      "__filename",
      withBindingExported(xgrammarSource as unknown as string),
    )(exports, { exports }, require, "/xgrammar/index.js");
    // The emscripten module binds console.log and console.error when it starts: route both
    // through us (its warnings go to stdout, which carries the answer): collected during a
    // guarded call, else sent to stderr.
    console.log = console.error = (...args: unknown[]) => {
      if (inst.log) inst.log.push(args.map(String).join(" "));
      else originalError(...args);
    };
    (WebAssembly as { instantiate: unknown }).instantiate = async (...args: unknown[]) => {
      const result = await (
        originalInstantiate as (...a: unknown[]) => Promise<WebAssembly.WebAssemblyInstantiatedSource>
      )(...args);
      const wasm =
        (result as { instance?: WebAssembly.Instance }).instance ?? (result as unknown as WebAssembly.Instance);
      inst.memory = Object.values(wasm.exports).find((e): e is WebAssembly.Memory => e instanceof WebAssembly.Memory);
      return result;
    };
    await exports.Testings._jsonSchemaToEBNF('{"type":"integer"}');
    inst.binding = (exports as unknown as { [BINDING_EXPORT]: () => Binding })[BINDING_EXPORT]();
  } finally {
    console.log = originalLog;
    console.error = originalError;
    WebAssembly.instantiate = originalInstantiate;
    done();
  }
  await checkDirectBitmask(inst);
  return inst;
}

// web-xgrammar's factories copy their arguments into C++ vectors they never free: the whole
// vocabulary with each TokenizerInfo (~2.5 MB of xgrammar's memory a vocabulary for SmolLM2's:
// disposing the TokenizerInfo never gave it back), the stop tokens and a TokenizerInfo handle
// with each matcher (~46 bytes a request), and compileGrammar(text) never frees the Grammar it
// parses (~4.7 KB a compiled grammar). So we make these through its binding and free what we
// hand it: the module's binding is exported by the text we evaluate.
const BINDING_DECLARATION = "let binding = null;";
const BINDING_EXPORT = "__mlxBinding";

function withBindingExported(source: string): string {
  if (!source.includes(BINDING_DECLARATION))
    throw new Error(`web-xgrammar's module no longer declares "${BINDING_DECLARATION}": update withBindingExported`);
  return source.replace(BINDING_DECLARATION, `${BINDING_DECLARATION} exports.${BINDING_EXPORT} = () => binding;`);
}

/** xgrammar's TokenizerInfo.createTokenizerInfo, with the vectors it converts freed. */
export function newTokenizerInfo(
  inst: Instance,
  vocab: string[],
  vocabType: string,
  prependSpace: boolean,
  vocabSize: number,
  stopIds: number[],
): XG.TokenizerInfo {
  const vocabVector = inst.binding.vecStringFromJSArray(vocab);
  const stopVector = inst.binding.vecIntFromJSArray(stopIds);
  try {
    const handle = new inst.binding.TokenizerInfo(
      vocabVector,
      vocabType.toUpperCase(),
      vocabSize,
      stopVector,
      prependSpace,
    );
    return new inst.xg.TokenizerInfo(handle);
  } finally {
    vocabVector.delete();
    stopVector.delete();
  }
}

/** xgrammar's GrammarMatcher.createGrammarMatcher, with its stop-token vector freed and no TokenizerInfo handle made. */
export function newMatcher(
  inst: Instance,
  grammar: XG.CompiledGrammar,
  stopIds: number[],
  vocabSize: number,
): XG.GrammarMatcher {
  const stopVector = inst.binding.vecIntFromJSArray(stopIds);
  try {
    const handle = new inst.binding.GrammarMatcher(
      (grammar as unknown as { handle: unknown }).handle,
      stopVector,
      false,
      -1,
    );
    const Matcher = inst.xg.GrammarMatcher as unknown as new (handle: unknown, vocabSize: number) => XG.GrammarMatcher;
    return new Matcher(handle, vocabSize);
  } finally {
    stopVector.delete();
  }
}

/** compiler.compileGrammar(ebnf), with the Grammar it parses freed (the compiled grammar keeps its own). */
export async function compileEbnf(
  inst: Instance,
  compiler: XG.GrammarCompiler,
  ebnf: string,
): Promise<XG.CompiledGrammar> {
  const parsed = await inst.xg.Grammar.fromEBNF(ebnf);
  try {
    return await compiler.compileGrammar(parsed);
  } finally {
    parsed.dispose();
  }
}

/** Runs an xgrammar call that may abort, turning an abort into an Error with xgrammar's message. */
export async function guarded<T>(inst: Instance, what: string, call: () => Promise<T> | T): Promise<T> {
  const log: string[] = [];
  inst.log = log;
  try {
    const result = await call();
    const warning = log.find((line) => line.includes("[WARNING]"));
    if (warning) throw new SchemaError(`${what}: ${diagnostic(warning)} (it would not be enforced)`);
    return result;
  } catch (error) {
    if (error instanceof SchemaError) throw error;
    const fatal = log.find((line) => line.includes("[FATAL]")) ?? log.find((line) => line !== "Aborted()");
    // A trap other than an abort (a deeply nested schema ran xgrammar's recursion past the end of
    // its WASM stack) leaks the whole stack, where an abort leaks part: every later call trapped too.
    const trapped = error instanceof WebAssembly.RuntimeError && !error.message.startsWith("Aborted(");
    if ((trapped || ++inst.aborts >= MAX_ABORTS) && current) {
      // Retire this instance; compiled grammars made on it stay usable by their matchers.
      current = undefined;
      for (const listener of retiredListeners) listener();
    }
    if (trapped) throw new SchemaError(`${what}: it nests too deeply or is too large for constrained decoding`);
    throw new SchemaError(`${what}: ${fatal ? diagnostic(fatal) : (error as Error).message}`);
  } finally {
    inst.log = undefined;
  }
}

/** "[FATAL] /path/file.cc:123: Check failed: (...) is false: message" → "message". */
function diagnostic(line: string): string {
  return line
    .replace(/^\[(FATAL|WARNING)\]\s+\S+:\d+:\s*/, "")
    .replace(/^Check failed: \(.*?\) is false:\s*/, "")
    .trim();
}

/** Bytes of xgrammar's instance memory (for tests: it grows and never shrinks). */
export async function grammarMemoryBytes(): Promise<number> {
  return (await instance()).memory?.buffer.byteLength ?? 0;
}

const words = (vocab: number) => Math.ceil(vocab / 32);

// The library only offers the bitmask through a promise (it awaits its own start-up each
// time), and the token loop's processors are synchronous. So we call the matcher's binding
// directly: it returns a std::vector<int32_t>, whose data we read from the instance's memory
// (libc++ lays a vector out as begin, end, capacity), or, if that could not be verified at
// start-up, element by element.
interface EmbindVector {
  $$: { ptr: number };
  size(): number;
  get(i: number): number;
  delete(): void;
}

export function readBitmask(t: { inst: Instance; vocabSize: number }, matcher: XG.GrammarMatcher): Int32Array {
  const handle = (matcher as unknown as { handle: { GetNextTokenBitmask(vocab: number): EmbindVector } }).handle;
  const vector = handle.GetNextTokenBitmask(t.vocabSize);
  try {
    return copyVector(t.inst, vector, words(t.vocabSize));
  } finally {
    vector.delete();
  }
}

function copyVector(inst: Instance, vector: EmbindVector, expected: number): Int32Array {
  if (inst.directBitmask && inst.memory) {
    const header = new Uint32Array(inst.memory.buffer, vector.$$.ptr, 2);
    const begin = header[0]!;
    const length = (header[1]! - begin) / 4;
    if (length === expected) return new Int32Array(inst.memory.buffer, begin, length).slice();
  }
  const n = vector.size();
  const out = new Int32Array(n);
  for (let i = 0; i < n; i++) out[i] = vector.get(i);
  return out;
}

/** Checks the direct read against the library's own on a small vocabulary with a known mask. */
async function checkDirectBitmask(inst: Instance): Promise<void> {
  if (!inst.memory) return;
  const vocab = [
    "{",
    "}",
    "a",
    "[",
    "]",
    "x",
    "0",
    "1",
    '"',
    " ",
    ...Array.from({ length: 60 }, (_, i) => `t${i}`),
    "</s>",
  ];
  const info = newTokenizerInfo(inst, vocab, "raw", false, vocab.length, [vocab.length - 1]);
  const compiler = await inst.xg.GrammarCompiler.createGrammarCompiler(info, false);
  const grammar = await compileEbnf(inst, compiler, 'root ::= "[" ("0" | "1")* "]"');
  const matcher = newMatcher(inst, grammar, [vocab.length - 1], vocab.length);
  try {
    const reference = await matcher.getNextTokenBitmask();
    inst.directBitmask = true;
    const vector = (
      matcher as unknown as { handle: { GetNextTokenBitmask(vocab: number): EmbindVector } }
    ).handle.GetNextTokenBitmask(vocab.length);
    const direct = copyVector(inst, vector, words(vocab.length));
    vector.delete();
    inst.directBitmask =
      direct.length === reference.length && direct.every((w, i) => w === reference[i]) && reference[0] === 1 << 3;
  } catch {
    inst.directBitmask = false;
  } finally {
    matcher.dispose();
    grammar.dispose();
    compiler.dispose();
    info.dispose();
  }
}
