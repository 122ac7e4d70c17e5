#!/usr/bin/env bun
// The `mlx` executable: one subcommand per file in src/cmd/.
import { defineCommand, runCommand, runMain, type ArgsDef } from "citty";
import pkg from "../package.json" with { type: "json" };
import { fail, failLog, failOutput, writeOutput } from "./cmd/log";
import {
  flagProblem,
  showUsage,
  withEmptyValuesApart,
  withLastValues,
  withNegativeValues,
  withSwitchesJoined,
} from "./cmd/strict-flags";
import { closeMatches } from "./store/aliases";
import { kernelEnvironmentProblem } from "./mlx/environment";

const subCommands = {
  run: () => import("./cmd/run").then((m) => m.default),
  chat: () => import("./cmd/chat").then((m) => m.default),
  "cache-prompt": () => import("./cmd/cache-prompt").then((m) => m.default),
  convert: () => import("./cmd/convert").then((m) => m.default),
  fuse: () => import("./cmd/fuse").then((m) => m.default),
  pull: () => import("./cmd/pull").then((m) => m.default),
  list: () => import("./cmd/list").then((m) => m.default),
  show: () => import("./cmd/show").then((m) => m.default),
  rm: () => import("./cmd/rm").then((m) => m.default),
  create: () => import("./cmd/create").then((m) => m.default),
  verify: () => import("./cmd/verify").then((m) => m.default),
  serve: () => import("./cmd/serve").then((m) => m.default),
  bench: () => import("./cmd/bench").then((m) => m.default),
  embed: () => import("./cmd/embed").then((m) => m.default),
  launch: () => import("./cmd/launch").then((m) => m.default),
  ps: () => import("./cmd/ps").then((m) => m.default),
  stop: () => import("./cmd/stop").then((m) => m.default),
};
type Name = keyof typeof subCommands;

/**
 * A command's definition. Loading one loads the shim (src/mlx/ffi.ts), which throws where it is
 * missing or broken: one line, as every error, rather than the runtime's report of a failed import.
 */
const loadCommand = (name: Name) => subCommands[name]().catch((error) => fail(error));

const main = defineCommand({
  meta: { name: "mlx", version: pkg.version, description: "Run, chat with, serve and benchmark local LLMs on MLX" },
  subCommands,
});

// The subcommand as citty finds it (the first word that is not a flag): its flags checked first.
let argv = process.argv.slice(2);
// `mlx help [command]`, as `ollama help` and `git help` take it: that command's --help.
if (argv[0] === "help") argv = [...argv.slice(1), "--help"];
// `mlx launch ... -- run --help` asks for run's help: shown once, as `mlx run --help` shows it
// (citty finds --help anywhere, and would show launch's).
const launched = argv.indexOf("--");
if (argv.find((a) => !a.startsWith("-")) === "launch" && launched >= 0) {
  const command = argv.slice(launched + 1);
  if (command.includes("--help") || command.includes("-h")) argv = command;
}
const asksHelp = argv.includes("--help") || argv.includes("-h");
// citty prints the version through consola, which drops it under TEST or NODE_ENV=test and
// prefixes it with "[log]" in CI: a script's `mlx --version` gets the bare version, always.
if (argv.length === 1 && argv[0] === "--version") {
  await writeOutput(`${pkg.version}\n`);
  process.exit(0);
}
// The usage lists every command with its description: each is loaded first, so that a shim that
// cannot load is one line there too.
const usageOfMlx = argv.length === 0 || (asksHelp && argv.every((a) => a.startsWith("-")));
if (usageOfMlx) await Promise.all(Object.keys(subCommands).map((name) => loadCommand(name as Name)));
// A bare `mlx` is asked what it does, as a bare `ollama` is (citty would add an error, styled apart).
if (argv.length === 0) {
  await showUsage(main);
  process.exit(0);
}
// citty would drop an option before the command unsaid (`mlx --json list` printed the table), or,
// with no command after it, print the usage and an error styled apart.
if (argv[0]!.startsWith("-") && !asksHelp) {
  const word = argv.find((a) => !a.startsWith("-"));
  const command = word !== undefined && Object.hasOwn(subCommands, word) ? word : "<command>";
  fail(
    new Error(
      word === undefined
        ? `unknown option '${argv[0]}' for mlx (it takes --help and --version); mlx --help lists the commands`
        : `'${argv[0]}' comes before the command: options go after it (mlx ${command} ${argv[0]} ...); mlx --help lists the commands`,
    ),
  );
}
const at = argv.findIndex((a) => !a.startsWith("-"));
const name = argv[at];
if (name !== undefined && Object.hasOwn(subCommands, name)) {
  const args = (await loadCommand(name as Name)).args as ArgsDef;
  argv = [...argv.slice(0, at + 1), ...withNegativeValues(args, argv.slice(at + 1))];
  const problem = flagProblem(name, args, argv.slice(at + 1));
  if (problem) fail(new Error(problem));
  if (name === "launch") await checkLaunchedFlags(argv.slice(at + 1));
  const normalized = withEmptyValuesApart(args, withLastValues(args, argv.slice(at + 1)));
  argv = [...argv.slice(0, at + 1), ...withSwitchesJoined(args, normalized)];
} else if (name !== undefined) {
  // citty would print the whole usage to stdout, where only answers go, and its error apart.
  const close = closeMatches(name, Object.keys(subCommands), 2);
  const hint = close.length > 0 ? ` (did you mean ${close.join(" or ")}?)` : "";
  fail(new Error(`unknown command '${name}'${hint}; mlx --help lists the commands`));
}

/**
 * `mlx launch ... -- <command> ...`: the command's flags checked once here, as each rank checks
 * its own (a misspelt flag was every rank's line and the launcher's again).
 */
async function checkLaunchedFlags(launchArgv: string[]): Promise<void> {
  const end = launchArgv.indexOf("--");
  const [command, ...flags] = end >= 0 ? launchArgv.slice(end + 1) : [];
  const { commandsThatSplit } = await import("./cmd/launch");
  if (command === undefined || !commandsThatSplit.includes(command)) return; // launch says so
  const args = (await loadCommand(command as Name)).args as ArgsDef;
  const problem = flagProblem(command, args, withNegativeValues(args, flags));
  if (problem) fail(new Error(problem));
}

const environmentProblem = kernelEnvironmentProblem();
if (environmentProblem) fail(new Error(environmentProblem));

// A reader of stdout that went away ends the command quietly, any other failed write in one line (failOutput).
process.stdout.on("error", failOutput);
// Likewise a reader of stderr (logs, --verbose figures) that went away (but mlx serve's: failLog).
process.stderr.on("error", failLog);

// citty shows the usage for a --help anywhere, also past `--`, where it is a word of the prompt
// (mlx run -- --help): there the command runs.
const flagsEnd = argv.indexOf("--");
const helpPastFlags = flagsEnd >= 0 && !argv.slice(0, flagsEnd).some((a) => a === "--help" || a === "-h");
if (helpPastFlags && (argv.includes("--help") || argv.includes("-h"))) await runCommand(main, { rawArgs: argv });
else await runMain(main, { rawArgs: argv, showUsage });
