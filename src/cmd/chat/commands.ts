// The slash commands of `mlx chat`. Each gets the session and its argument text, and
// returns false when the chat should end.
import { errorLine } from "../errors";
import { existsSync, writeFileSync } from "node:fs";
import * as p from "@clack/prompts";
import type { ChatSession } from "./session";
import type { KeyLender } from "./input";
import {
  applyFormat,
  applySetting,
  describeModel,
  describeRemoteModel,
  parameterSetting,
  showPart,
  showParts,
  settingNames,
  type ChatSettings,
} from "./settings";
import { validateSampling } from "../../engine/sampling";
import type { SamplingInput } from "../../api/common";
import { settleSampling } from "../../engine/model-settings";
import { fileErrorReason, writeErrorReason } from "../../format";
import { Conversation } from "../../engine/conversation";
import { hasAlias, loadAliases } from "../../store/aliases";
import { readTextAtMost } from "../../files";

/**
 * The most bytes /load reads: a conversation holds at most a context's worth of text (a million
 * tokens is a few MB), so more is not one (/load /dev/zero read for good, its memory growing).
 */
const savedConversationBytes = 64e6;

/** `lendKeys` lends the terminal's keys to a prompt of the command's own; absent without a terminal. */
type Handler = (session: ChatSession, args: string, lendKeys?: KeyLender) => Promise<boolean | void> | boolean | void;

const help = `commands:
  /set <name> <value>   change a setting: ${settingNames.join(", ")}
                        (/set format json|<schema file>|off: answers as JSON, or JSON matching a schema)
                        (as in Ollama: /set parameter temperature|num_predict|top_k|... <value>, /set verbose|quiet,
                        /set think|nothink: a thinking model's reasoning on or off, /set noformat)
  /show [part]          the model (architecture, parameters, quantization, context, template) and settings;
                        one part of it: /show ${showParts.join("|")} (the model's Modelfile, its license)
  /clear                forget the conversation
  /save <file>          save the conversation as JSON
  /load <file>          load a conversation saved with /save (as in Ollama, /load <model alias> switches model)
  /model [name]         switch model (pick from a list without a name)
  /stats on|off         show tokens/s, time to first token and context use after each answer
  /bye                  leave (also Ctrl-D at an empty prompt)
multi-line input: start and end it with """ (a multi-line system prompt: /set system """ ... """)`;

const commands: Record<string, Handler> = {
  help: (s) => s.say(help),
  "?": (s) => s.say(help),
  bye: () => false,
  exit: () => false,
  clear: (s) => {
    s.conversation.clear();
    s.say("conversation cleared");
  },
  show: (s, args) => {
    const c = s.conversation;
    const part = showPart(args);
    s.say(
      c instanceof Conversation
        ? describeModel(
            c.lm,
            s.settings,
            part,
            part === "modelfile" || part === "license" ? aliasLicense(s.modelName) : undefined,
          )
        : describeRemoteModel(c.remote, s.settings, part),
    );
  },
  set: async (s, args) => {
    // The value as typed: a system prompt keeps its spacing.
    let [, name = "", value = ""] = /^(\S*)\s*([\s\S]*)$/.exec(args) ?? [];
    if (!name) return s.say(`usage: /set <name> <value> (names: ${settingNames.join(", ")})`);
    // As ollama run takes them: /set parameter temperature 0.7, and /set verbose|quiet for the stats.
    if (name === "parameter") [name, value] = parameterSetting(value);
    if ((name === "verbose" || name === "quiet") && !value.trim())
      return commands.stats!(s, name === "verbose" ? "on" : "off");
    // And /set think|nothink for a thinking model's reasoning, /set noformat for free text again.
    if ((name === "think" || name === "nothink") && !value.trim()) return s.say(s.setThinking(name === "think"));
    if (name === "noformat" && !value.trim()) return s.say(await applyFormat(s.settings, "off"));
    if (name === "format") return s.say(await applyFormat(s.settings, value));
    const c = s.conversation;
    s.say(
      applySetting(s.settings, name, value, c instanceof Conversation ? c.lm.config.maxPositionEmbeddings : undefined),
    );
    if (name === "system") s.conversation.system = s.settings.system;
  },
  stats: (s, args) => {
    const value = args.trim();
    if (value !== "on" && value !== "off")
      return s.say(`/stats is ${s.settings.stats ? "on" : "off"}; use /stats on or /stats off`);
    s.settings.stats = value === "on";
    s.say(`stats ${value}`);
  },
  save: (s, args) => {
    const file = args.trim();
    if (!file) return s.say("usage: /save <file>");
    const saved = {
      model: s.modelName,
      system: s.settings.system,
      // The values the answers ran with, the alias's included: loaded, they are the user's.
      settings: { ...s.sampling, max_tokens: s.settings.maxTokens },
      messages: s.conversation.messages,
    };
    try {
      writeFileSync(file, `${JSON.stringify(saved, null, 2)}\n`);
    } catch (error) {
      throw new Error(`cannot write '${file}': ${writeErrorReason(error)}`);
    }
    s.say(`saved ${s.conversation.messages.length} messages to ${file}`);
  },
  load: async (s, args) => {
    const file = args.trim();
    if (!file) return s.say("usage: /load <file>");
    // ollama run's /load <model> switches to that model: a name that is no file here but a model's alias does so too.
    if (!existsSync(file) && isAlias(file)) return s.switchModel(file);
    const saved = readSaved(file);
    // What /save writes: the user's messages and the answers (the system prompt is kept apart).
    // Another role would be rendered as the template pleases, a "system" one twice.
    if (
      !Array.isArray(saved?.messages) ||
      saved.messages.some(
        (m: { role?: unknown; content?: unknown }) =>
          (m?.role !== "user" && m?.role !== "assistant") || typeof m?.content !== "string",
      )
    ) {
      throw new Error(
        `${file} is not a conversation saved with /save (needs messages: [{role: "user" or "assistant", content}])`,
      );
    }
    // Checked before anything changes: a bad file leaves the session as it was.
    const settings = saved.settings === undefined ? undefined : savedSettings(file, saved.settings, s.settings);
    s.conversation.clear();
    s.conversation.messages = saved.messages;
    s.settings.system = typeof saved.system === "string" ? saved.system : undefined;
    s.conversation.system = s.settings.system;
    if (settings) Object.assign(s.settings, settings);
    // The model it was saved with is not loaded in its place (that can take long); said, so the answers' change is no surprise.
    const otherModel =
      typeof saved.model === "string" && saved.model !== s.modelName
        ? ` (saved with ${saved.model}; still ${s.modelName}: /model ${saved.model} to switch)`
        : "";
    s.say(`loaded ${saved.messages.length} messages${settings ? " and the settings" : ""} from ${file}${otherModel}`);
  },
  model: async (s, args, lendKeys) => {
    let name = args.trim();
    if (!name) {
      const table = loadAliases();
      const aliases = [
        ...table.models.values(),
        ...[...table.remotes.values()].map((r) => ({ name: r.name, description: `remote ${r.kind}: ${r.model}` })),
      ];
      if (!lendKeys) return s.say(`usage: /model <name> (aliases: ${aliases.map((a) => a.name).join(", ")})`);
      const choice = await lendKeys((input) =>
        p.select({
          message: "Switch to which model?",
          options: aliases.map((a) => ({ value: a.name, label: a.name, hint: a.description })),
          input,
        }),
      );
      if (p.isCancel(choice)) return s.say("kept the current model");
      name = choice as string;
    }
    await s.switchModel(name);
  },
};

/** The license models.toml gives the alias `name` (a Modelfile's LICENSE), if any. */
function aliasLicense(name: string): string | undefined {
  try {
    return loadAliases().models.get(name)?.license;
  } catch {
    return undefined; // a models.toml that cannot be read: as a model without one
  }
}

/** Whether `name` is a model's alias, local or remote (models.toml). */
function isAlias(name: string): boolean {
  try {
    return hasAlias(loadAliases(), name);
  } catch {
    return false; // a models.toml that cannot be read: /load says the file is missing, /model says why
  }
}

/** A file written by /save, parsed; a one-line error naming the file when it cannot be read or is not JSON. */
function readSaved(file: string) {
  let text: string;
  try {
    text = readTextAtMost(file, savedConversationBytes);
  } catch (error) {
    throw new Error(`cannot read '${file}': ${fileErrorReason(error)}`);
  }
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new Error(`'${file}' is not valid JSON: ${(error as Error).message}`);
  }
}

/** The sampling settings and max_tokens /save wrote (as `current` has them), checked as /set checks them. */
function savedSettings(
  file: string,
  saved: Record<string, unknown>,
  current: ChatSettings,
): Pick<ChatSettings, "sampling" | "maxTokens" | "maxTokensChosen"> {
  const sampling: SamplingInput = { ...current.sampling, seed: undefined };
  for (const key of ["temperature", "topP", "topK", "minP", "repetitionPenalty", "seed"] as const) {
    const value = saved[key];
    if (value === undefined) continue;
    if (typeof value !== "number")
      throw new Error(`${file}: settings.${key} must be a number (got ${JSON.stringify(value)})`);
    sampling[key] = value;
  }
  // Saved without one, the answers drew a random seed: so again, over the model's own.
  sampling.randomSeed = sampling.seed === undefined || undefined;
  const maxTokens = saved.max_tokens ?? current.maxTokens;
  if (!Number.isInteger(maxTokens) || (maxTokens as number) <= 0)
    throw new Error(`${file}: settings.max_tokens must be a whole number > 0 (got ${JSON.stringify(maxTokens)})`);
  try {
    validateSampling(settleSampling(sampling, {}, {}));
  } catch (error) {
    throw new Error(`${file}: ${(error as Error).message}`);
  }
  return {
    sampling,
    maxTokens: maxTokens as number,
    // A max_tokens saved with the conversation is a choice made then, kept as /set's is.
    maxTokensChosen: current.maxTokensChosen || saved.max_tokens !== undefined,
  };
}

/** Runs a line that starts with "/"; unknown commands point to /help. */
export async function runCommand(session: ChatSession, line: string, lendKeys?: KeyLender): Promise<boolean> {
  const [, name = "", args = ""] = /^\/(\S*)\s*([\s\S]*)$/.exec(line.trim()) ?? [];
  const handler = commands[name.toLowerCase()];
  if (!handler) {
    session.say(`unknown command '/${name}'; /help lists the commands`);
    return true;
  }
  try {
    return (await handler(session, args, lendKeys)) !== false;
  } catch (error) {
    session.say(`error: ${errorLine(error)}`);
    return true;
  }
}
