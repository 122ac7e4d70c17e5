// Ollama's Modelfile, read into what create makes of it (`mlx create NAME -f Modelfile`): FROM,
// PARAMETER, SYSTEM, MESSAGE, ADAPTER and LICENSE, each an instruction (any case) at a line's
// start followed by its argument: the rest of the line, a "quoted" string, or a """block""" of
// lines. Lines starting with # are comments.
import { homedir } from "node:os";
import { dirname, isAbsolute, join, resolve } from "node:path";
import type { ModelRecipe } from "./create";

/**
 * A Modelfile's recipe (the name is the command's); `file` names its errors, and relative FROM and
 * ADAPTER paths start from its folder. `relativePaths: false`: a Modelfile sent to a server, which
 * has no folder: a relative path is refused (an absolute one, or a model's name, is taken), as Ollama's server takes it.
 */
export function parseModelfile(
  text: string,
  file: string,
  { relativePaths = true }: { relativePaths?: boolean } = {},
): Omit<ModelRecipe, "name"> {
  const recipe: Omit<ModelRecipe, "name" | "from"> & { from?: string } = {};
  const parameters: Record<string, unknown> = {};
  const messages: NonNullable<ModelRecipe["messages"]> = [];
  const licenses: string[] = [];
  const lines = text.replace(/\r\n/g, "\n").split("\n");
  // A relative path is from the Modelfile's folder, as Ollama takes it (~/ from the home folder);
  // a name (an alias, a stored model) is a name.
  const path = (value: string, at: string, instruction: string) => {
    if (/^~[/\\]/.test(value)) return join(homedir(), value.slice(2));
    if (isAbsolute(value)) return value;
    if (!relativePaths)
      throw new Error(
        `${at}: ${instruction} ${value} is a relative path, which the server cannot resolve: give an absolute path${instruction === "FROM" ? " or a model's name" : ""}`,
      );
    return resolve(dirname(file), value);
  };
  const pathOrName = (value: string, at: string) =>
    /^\.\.?[/\\]|^~?[/\\]/.test(value) || isAbsolute(value) ? path(value, at, "FROM") : value;
  for (let i = 0; i < lines.length; i++) {
    const at = `${file}:${i + 1}`;
    // Spaces at its end may be a quoted value's, which goes on over the next line.
    const line = lines[i]!.trimStart();
    if (line.trim() === "" || line.startsWith("#")) continue;
    const instruction = /^([A-Za-z]+)\s*/.exec(line);
    if (!instruction) throw new Error(`${at}: expected an instruction (FROM, PARAMETER, SYSTEM, ...), got '${line}'`);
    const name = instruction[1]!.toUpperCase();
    let rest = line.slice(instruction[0].length);
    // PARAMETER and MESSAGE take a word (the parameter's name, the role) before their value.
    let word = "";
    if (name === "PARAMETER" || name === "MESSAGE") {
      const first = /^(\S+)\s*/.exec(rest);
      if (!first) throw new Error(`${at}: ${name} needs ${name === "PARAMETER" ? "a name" : "a role"} and a value`);
      word = first[1]!;
      rest = rest.slice(first[0].length);
    }
    const read = argument(rest, lines, i, at);
    i = read.lastLine;
    const value = read.value;
    if (value === "" && name !== "SYSTEM" && name !== "MESSAGE") throw new Error(`${at}: ${name} needs a value`);
    switch (name) {
      case "FROM":
        recipe.from = pathOrName(value, at);
        break;
      case "ADAPTER":
        recipe.adapter = path(value, at, "ADAPTER");
        break;
      case "SYSTEM":
        recipe.system = value;
        break;
      case "LICENSE":
        licenses.push(value);
        break;
      case "PARAMETER":
        // Each stop line adds a stop string, as Ollama reads them; any other parameter is one value.
        if (word === "stop") parameters.stop = [...((parameters.stop as string[] | undefined) ?? []), value];
        else if (word in parameters) throw new Error(`${at}: PARAMETER ${word} is given twice`);
        else parameters[word] = value;
        break;
      case "MESSAGE":
        if (word !== "user" && word !== "assistant")
          throw new Error(`${at}: MESSAGE's role must be user or assistant (a system prompt is SYSTEM), got '${word}'`);
        messages.push({ role: word, content: value });
        break;
      case "TEMPLATE":
        throw new Error(
          `${at}: TEMPLATE is a Go template, which mlx does not render: a model answers through its own (Jinja) chat template; leave TEMPLATE out`,
        );
      default:
        throw new Error(
          `${at}: unknown instruction '${instruction[1]}' (known: FROM, PARAMETER, SYSTEM, MESSAGE, ADAPTER, LICENSE)`,
        );
    }
  }
  if (recipe.from === undefined) throw new Error(`${file}: no FROM line: name the model to make it from`);
  return {
    ...recipe,
    from: recipe.from,
    ...(Object.keys(parameters).length ? { parameters } : {}),
    ...(messages.length ? { messages } : {}),
    ...(licenses.length ? { license: licenses.join("\n") } : {}),
  };
}

/**
 * An instruction's argument from `rest` (what follows it on line `i`): a """block""" or a "quoted"
 * string (\" and \\ inside), either of which may run over the next lines, or the rest of the line.
 * `lastLine`: the line the argument ends on.
 */
function argument(rest: string, lines: string[], i: number, at: string): { value: string; lastLine: number } {
  if (rest.startsWith('"""')) {
    let text = rest.slice(3);
    let line = i;
    while (!text.includes('"""')) {
      line++;
      if (line >= lines.length) throw new Error(`${at}: a """ block that is never closed`);
      text += `\n${lines[line]}`;
    }
    const end = text.indexOf('"""');
    if (text.slice(end + 3).trim() !== "") throw new Error(`${at}: text after the closing """`);
    // A block written on lines of its own (SYSTEM """, the text, """) is the text between them.
    return { value: text.slice(0, end).replace(/^\n/, "").replace(/\n$/, ""), lastLine: line };
  }
  if (rest.startsWith('"')) {
    // It may run over lines, as Ollama reads one (and /api/show writes text it cannot put in a block).
    let text = rest;
    let line = i;
    let quoted: RegExpExecArray | null;
    while (!(quoted = /^"((?:[^"\\]|\\.)*)"/.exec(text))) {
      line++;
      if (line >= lines.length) throw new Error(`${at}: a quoted value that is never closed`);
      text += `\n${lines[line]}`;
    }
    if (text.slice(quoted[0].length).trim() !== "") throw new Error(`${at}: text after the closing "`);
    return { value: quoted[1]!.replace(/\\(["\\])/g, "$1"), lastLine: line };
  }
  return { value: rest.trim(), lastLine: i };
}

/** What a Modelfile written by writeModelfile says of a model. */
export interface ModelfileParts {
  from: string;
  adapter?: string;
  /** PARAMETER lines, by Ollama's names (ollamaParameters). */
  parameters: [name: string, value: number | string][];
  system?: string;
  messages?: { role: string; content: string }[];
  license?: string;
}

/**
 * A model's Modelfile, as Ollama's /api/show and `ollama run`'s /show modelfile give it, which
 * parseModelfile (mlx create -f) reads back.
 */
export function writeModelfile({ from, adapter, parameters, system, messages = [], license }: ModelfileParts): string {
  return [
    `FROM ${from}\n`,
    adapter === undefined ? "" : `ADAPTER ${adapter}\n`,
    ...parameters.map(([name, value]) => `PARAMETER ${name} ${modelfileParameter(value)}\n`),
    system === undefined ? "" : `SYSTEM ${modelfileText(system)}\n`,
    ...messages.map((m) => `MESSAGE ${m.role} ${modelfileText(m.content)}\n`),
    license === undefined ? "" : `LICENSE ${modelfileText(license)}\n`,
  ].join("");
}

/**
 * A Modelfile's text argument, written so that a Modelfile reads it back as it is: in triple
 * quotes, which keep its lines and quotes as they are (Ollama writes text over lines or with quotes
 * so). Where they cannot hold it (a """ inside, a quote or a line break at an end, which the block
 * would take as its own), a "quoted" string with its quotes and backslashes escaped, which mlx's
 * Modelfile reads (Ollama's writes such text so that it does not read back at all).
 */
const modelfileText = (text: string) =>
  /"""|"$|^\n|\n$/.test(text) ? `"${text.replace(/["\\]/g, "\\$&")}"` : `"""${text}"""`;

/**
 * A PARAMETER's value as a Modelfile reads it back: as Ollama writes it, a number or a stop string
 * bare where a line holds it as it is (no line break, no space at an end, no quote to start it,
 * which would open a quoted string), else quoted as modelfileText quotes.
 */
const modelfileParameter = (value: number | string) =>
  typeof value === "number" || /^[^\s"](.*\S)?$/.test(value) ? String(value) : modelfileText(value);
