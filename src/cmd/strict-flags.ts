// Flags a command does not declare are an error, as argparse makes them for mlx-lm: citty
// ignores them, so a misspelt one (--temprature 0.2) would silently change nothing. Checked with
// node:util's strict parser against the command's own declarations, before citty parses. And a
// negative number after a flag that takes a value is that value (--keep-alive -1, as Ollama's).
import type { ArgsDef } from "citty";
import { parseArgs } from "node:util";
import { closeMatches } from "../store/aliases";

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
 * which its ranks check themselves.
 */
export function flagProblem(command: string, args: ArgsDef, argv: string[]): string | undefined {
  const options = declaredOptions(args);
  const end = argv.indexOf("--");
  try {
    parseArgs({
      args: end < 0 ? argv : argv.slice(0, end),
      options,
      strict: true,
      allowPositionals: true,
      allowNegative: true,
    });
    return undefined;
  } catch (error) {
    const message = (error as Error).message;
    const unknown = /^Unknown option '(-{1,2})([^']+)'/.exec(message);
    if (unknown) {
      const [, dashes, name] = unknown;
      const close = dashes === "--" ? closeMatches(name!, Object.keys(options), 2) : [];
      const hint = close.length > 0 ? ` (did you mean ${close.map((c) => `--${c}`).join(" or ")}?)` : "";
      return `unknown option ${dashes}${name} for mlx ${command}${hint}; mlx ${command} --help lists them`;
    }
    const ambiguous = /^Option '(?:-\w, )?(--[^' ]+)[^']*' argument is ambiguous/.exec(message);
    if (ambiguous) return `${ambiguous[1]} takes a value: write one that starts with '-' as ${ambiguous[1]}=<value>`;
    return message.split("\n")[0];
  }
}
