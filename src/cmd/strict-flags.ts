// Flags a command does not declare are an error, as argparse makes them for mlx-lm: citty
// ignores them, so a misspelt one (--temprature 0.2) would silently change nothing. So are
// arguments a command takes none of (mlx list extra). Checked with node:util's strict parser
// against the command's own declarations, before citty parses. A negative number after a flag
// that takes a value is that value (--keep-alive -1, as Ollama's), a flag given twice keeps its
// last value, as argparse does (citty would hand the command both), unless it is repeatable, and
// an empty value (--system=) is the flag's, not the next word's.
import { renderUsage, type ArgsDef, type CommandDef, type PositionalArgDef, type StringArgDef } from "citty";
import { colors } from "consola/utils";
import { parseArgs } from "node:util";
import { closeMatches } from "../store/aliases";
import { writeOutput } from "./log";

const repeatableFlags = new WeakSet<object>();

/** Declares a flag that may be given several times, each value kept (citty gives them as an array). */
export function repeatable<T extends StringArgDef>(def: T): T {
  repeatableFlags.add(def);
  return def;
}

const variadicArgs = new WeakSet<object>();

/** Declares a positional argument that takes all the words given (embed's texts, run's prompt). */
export function variadic<T extends PositionalArgDef>(def: T): T {
  variadicArgs.add(def);
  return def;
}

type Option = { type: "string" | "boolean"; short?: string; multiple: true };

const negativeNumber = /^-(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i;

/** The command's flags as node:util's parser takes them: each long alias an option of its own. */
function declaredOptions(args: ArgsDef): Record<string, Option> {
  const options: Record<string, Option> = { help: { type: "boolean", short: "h", multiple: true } };
  for (const [name, def] of Object.entries(args)) {
    if (def.type !== "string" && def.type !== "boolean") continue;
    const aliases = def.alias === undefined ? [] : Array.isArray(def.alias) ? def.alias : [def.alias];
    const short = aliases.find((a) => a.length === 1);
    options[name] = { type: def.type, multiple: true, ...(short ? { short } : {}) };
    for (const long of aliases.filter((a) => a.length > 1)) options[long] = { type: def.type, multiple: true };
  }
  return options;
}

/**
 * `argv` with each negative number that follows a flag taking a value joined to it
 * (`--temp -1` → `--temp=-1`, `-n -1` → `-n=-1`): both parsers would read it as flags.
 */
export function withNegativeValues(args: ArgsDef, argv: string[]): string[] {
  const takesValue = new Set<string>();
  for (const [name, option] of Object.entries(declaredOptions(args))) {
    if (option.type !== "string") continue;
    takesValue.add(`--${name}`);
    if (option.short) takesValue.add(`-${option.short}`);
    // A one-letter flag's name (launch's n) is typed with one dash, and both parsers read it so.
    if (name.length === 1) takesValue.add(`-${name}`);
  }
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const next = argv[i + 1];
    if (argv[i] === "--") return [...out, ...argv.slice(i)];
    if (takesValue.has(argv[i]!) && next !== undefined && negativeNumber.test(next)) {
      out.push(`${argv[i]}=${next}`);
      i++;
    } else out.push(argv[i]!);
  }
  return out;
}

/**
 * The one-line problem with `argv` (what follows `mlx <command>`) against the command's declared
 * `args`, or undefined where there is none. What follows `--` is not looked at: launch's command,
 * checked apart against its own flags (main.ts).
 */
export function flagProblem(command: string, args: ArgsDef, argv: string[]): string | undefined {
  const options = declaredOptions(args);
  const end = argv.indexOf("--");
  try {
    const { values, positionals } = parseArgs({
      args: end < 0 ? argv : argv.slice(0, end),
      options,
      strict: true,
      allowPositionals: true,
      allowNegative: true,
    });
    // citty would print the whole usage to stdout, where only answers go, and its error apart.
    const required = Object.entries(args).filter(([, def]) => def.type === "positional" && def.required);
    const missing = required[positionals.length];
    if (missing && !values.help) {
      const [name, def] = missing;
      return `mlx ${command} needs ${name.toUpperCase()}: ${def.description?.replace(/^./, (c) => c.toLowerCase())}; mlx ${command} --help shows its usage`;
    }
    // citty would drop the words past the declared ones: `mlx rm a b` would keep b, unsaid.
    const declared = Object.values(args).filter((def) => def.type === "positional");
    if (declared.some((def) => variadicArgs.has(def)) || positionals.length <= declared.length) return undefined;
    if (declared.length === 0)
      return `mlx ${command} takes no arguments (got '${positionals[0]}'); mlx ${command} --help lists its options`;
    const count = declared.length === 1 ? "one argument" : `${declared.length} arguments`;
    return `mlx ${command} takes ${count} ('${positionals[declared.length]}' is one too many; quote one with spaces in it)`;
  } catch (error) {
    const message = (error as Error).message;
    const unknown = /^Unknown option '(-{1,2})([^']+)'/.exec(message);
    if (unknown) {
      const [, dashes, name] = unknown;
      const close = dashes === "--" ? closeMatches(name!, Object.keys(options), 2) : [];
      const hint = close.length > 0 ? ` (did you mean ${close.map((c) => `--${c}`).join(" or ")}?)` : "";
      return `unknown option ${dashes}${name} for mlx ${command}${hint}; mlx ${command} --help lists them`;
    }
    // A word after one dash is read as one-letter flags ("-v hi": -v, then ' '), and the parser
    // names only the letter it did not know: the word is named whole, with how to pass it.
    const letter = /^Unknown option '([^-'][^']*)'/.exec(message)?.[1];
    const word =
      letter && argv.slice(0, end < 0 ? undefined : end).find((a) => /^-[^-]./.test(a) && a.includes(letter));
    if (word)
      return `unknown option '${word}' for mlx ${command}; an argument that starts with '-' goes after --, as in mlx ${command} -- '${word}'`;
    const ambiguous = /^Option '(?:-\w, )?(--?[^' ]+)[^']*' argument is ambiguous/.exec(message);
    if (ambiguous) return `${ambiguous[1]} takes a value: write one that starts with '-' as ${ambiguous[1]}=<value>`;
    return oneDash(message.split("\n")[0]!);
  }
}

/**
 * `argv` (checked by flagProblem) with only the last of each flag given more than once, unless
 * it is repeatable. What follows `--` is kept as it is.
 */
export function withLastValues(args: ArgsDef, argv: string[]): string[] {
  const canonical = new Map<string, string>([["help", "help"]]);
  for (const [name, def] of Object.entries(args)) {
    if ((def.type !== "string" && def.type !== "boolean") || repeatableFlags.has(def)) continue;
    const aliases = def.alias === undefined ? [] : [def.alias].flat();
    for (const long of [name, ...aliases.filter((a) => a.length > 1)]) canonical.set(long, name);
  }
  // A group of short flags (-vm x) shares its word: such a word is left as it is.
  const { tokens, perWord } = optionTokens(args, argv);
  const last = new Map<string, number>();
  for (const t of tokens) if (t.kind === "option" && canonical.has(t.name)) last.set(canonical.get(t.name)!, t.index);
  const dropped = new Set<number>();
  for (const t of tokens) {
    if (t.kind !== "option" || !canonical.has(t.name) || perWord.get(t.index)! > 1) continue;
    if (last.get(canonical.get(t.name)!) === t.index) continue;
    dropped.add(t.index);
    if (t.value !== undefined && !t.inlineValue) dropped.add(t.index + 1);
  }
  return argv.filter((_, i) => !dropped.has(i));
}

/**
 * `argv` (checked by flagProblem) with each switch written `--name=true` (`-y` → `--yes=true`):
 * citty's parser takes the word after a bare switch for a number where it can, so `mlx rm -y 007`
 * removed '7' and `mlx pull -v ""` pulled '0'. What follows `--`, and --help, are kept as they are.
 */
export function withSwitchesJoined(args: ArgsDef, argv: string[]): string[] {
  const options = declaredOptions(args);
  const { tokens, perWord } = optionTokens(args, argv);
  const out = [...argv];
  for (const t of tokens) {
    if (t.kind !== "option" || t.name === "help" || options[t.name]?.type !== "boolean") continue;
    // A group of short flags (-vy) shares its word, and --no-x says false: left as they are.
    if (perWord.get(t.index)! > 1 || t.rawName.startsWith("--no-") || t.inlineValue) continue;
    out[t.index] = `--${t.name}=true`;
  }
  return out;
}

/**
 * `argv` (checked by flagProblem) with each flag given an empty value in its own word
 * (`--system=` → `--system ""`): citty's parser took the next word for its value, so
 * `mlx run --draft-model= hi` drafted with a model named 'hi'. What follows `--` is kept as it is.
 */
export function withEmptyValuesApart(args: ArgsDef, argv: string[]): string[] {
  const { tokens, perWord } = optionTokens(args, argv);
  const empty = new Set(
    tokens
      .filter((t) => t.kind === "option" && t.inlineValue && t.value === "" && perWord.get(t.index) === 1)
      .map((t) => t.index),
  );
  return argv.flatMap((word, i) => (empty.has(i) ? [word.slice(0, word.indexOf("=")), ""] : [word]));
}

/**
 * The words of `argv` before `--` (checked by flagProblem) as node:util's parser reads them, and
 * how many options each word holds (a group of short flags, -vy, holds several).
 */
function optionTokens(args: ArgsDef, argv: string[]) {
  const end = argv.indexOf("--");
  const { tokens } = parseArgs({
    args: end < 0 ? argv : argv.slice(0, end),
    options: declaredOptions(args),
    strict: true,
    allowPositionals: true,
    allowNegative: true,
    tokens: true,
  });
  const perWord = new Map<number, number>();
  for (const t of tokens) perWord.set(t.index, (perWord.get(t.index) ?? 0) + 1);
  return { tokens, perWord };
}

/** A message with each one-letter flag written as it is typed (launch's -n, not --n). */
const oneDash = (text: string) => text.replace(/(?<![\w-])--([A-Za-z])(?![\w-])/g, "-$1");

/**
 * citty's usage of a command, its one-letter flags written as they are typed. Written to stdout
 * itself rather than through consola, whose level drops it where TEST or NODE_ENV=test is set.
 */
export async function showUsage<T extends ArgsDef>(cmd: CommandDef<T>, parent?: CommandDef<T>): Promise<void> {
  // citty writes every alias with one dash, so a long one (fuse's --dequantize) would read as
  // `-dequantize`, which the parser refuses: two dashes, one padding space fewer.
  const args = typeof cmd.args === "function" ? await cmd.args() : await cmd.args;
  const longAliases = Object.values(args ?? {}).flatMap((def) =>
    (def.type !== "string" && def.type !== "boolean") || def.alias === undefined
      ? []
      : [def.alias].flat().filter((a) => a.length > 1),
  );
  // The option column is right-aligned: a space in front of each shortened flag keeps it so.
  // citty pads every description to the longest one's width: trailing blanks, cut.
  let usage = (await renderUsage(cmd, parent)).replace(/ `--([A-Za-z])(?=[`=])/g, "  `-$1").replace(/ +(`?)$/gm, "$1");
  for (const alias of longAliases) usage = usage.replaceAll(` \`-${alias},`, `\`--${alias},`);
  // citty marks names with backquotes for consola to colour; colors is plain where colour is off.
  // Waited for: citty exits as soon as this returns.
  await writeOutput(`${usage.replace(/`([^`]+)`/g, (_, name: string) => colors.cyan(name))}\n\n`);
}
