// `mlx chat`: an interactive conversation that keeps its KV cache between turns.
import { errorLine } from "./errors";
import { defineCommand } from "citty";
import { join } from "node:path";
import { storeRoot } from "../store/paths";
import { fail, setVerbose } from "./log";
import { openModel, type OpenOptions } from "./open-model";
import { remoteModel, RemoteModel } from "../providers";
import { locateModel } from "../store/resolve";
import { loadAliases } from "../store/aliases";
import {
  adapterArg,
  adapterFrom,
  kvCacheArgs,
  distributedArgs,
  kvQuantizationFrom,
  maxKvSizeFrom,
  modelArg,
  pipelineFrom,
  positiveInteger,
  refuseLocalModelFlags,
  samplingArgs,
  samplingFrom,
  speculationArgs,
  speculationFrom,
} from "./options";
import { answerLength, ChatSession } from "./chat/session";
import { thinkingArgs, thinkingFrom } from "./thinking";
import { LineInput } from "./chat/input";
import { runCommand } from "./chat/commands";

export default defineCommand({
  meta: { name: "chat", description: "Chat with a model in the terminal (/help inside lists the commands)" },
  args: {
    ...modelArg,
    ...adapterArg,
    system: { type: "string", description: "System prompt" },
    "max-tokens": {
      type: "string",
      description: "Most tokens per answer (default: the model's num_predict in models.toml, else 1024)",
    },
    ...samplingArgs,
    ...kvCacheArgs,
    ...thinkingArgs,
    ...speculationArgs,
    ...distributedArgs,
    stats: { type: "boolean", description: "Show tokens/s, time to first token and context use after each answer" },
    verbose: {
      type: "boolean",
      alias: "v",
      description: "Show the --stats figures after each answer, and stack traces on errors",
    },
  },
  async run({ args }) {
    const verbose = Boolean(args.verbose);
    setVerbose(verbose);
    let input: LineInput | undefined;
    try {
      const maxTokensFlag =
        args["max-tokens"] === undefined ? undefined : positiveInteger("max-tokens", args["max-tokens"]);
      const settings = {
        sampling: samplingFrom(args),
        system: args.system,
        // --verbose as mlx run's and ollama run's: the speed figures after each answer.
        stats: Boolean(args.stats || args.verbose),
        thinking: thinkingFrom(args),
        hideThinking: Boolean(args["hide-thinking"]),
      };
      // The default's own name: /save records it, and /load offers `/model NAME` to switch back to it.
      const modelName = args.model ?? loadAliases().defaultModel;
      // Every model this chat opens, the first and each /model switches to, keeps the command
      // line's cache and speculation flags (else what models.toml gives that model).
      const cacheAndSpeculation = (name: string | undefined): OpenOptions => ({
        kvQuantization: kvQuantizationFrom(args, name),
        maxKvSize: maxKvSizeFrom(args, name),
        speculation: speculationFrom(args, name),
      });
      const pipeline = pipelineFrom(args);
      const remote = remoteModel(args.model);
      if (remote) refuseLocalModelFlags(args, args.model);
      const model =
        remote ??
        (await openModel(args.model, {
          ...cacheAndSpeculation(args.model),
          adapter: adapterFrom(args, args.model),
          pipeline,
        }));
      const maxTokens = maxTokensFlag ?? answerLength(model);
      input = new LineInput(join(storeRoot(), "chat_history"));
      const say = (text: string) => process.stderr.write(`${text}\n`);
      // An --adapter is trained for the first model's weights: another model gets only its alias's.
      const openSwitched = async (name: string) => {
        if (pipeline) {
          // The model held, by its name, an alias or its path: nothing to switch (nothing loaded again).
          if (!(model instanceof RemoteModel) && locatedPath(name) === model.path) return undefined;
          // The other ranks hold the first model's layers: another would load whole on rank 0 alone.
          throw new Error(
            `the model is split across processes (mlx launch): /model cannot switch it; launch again with -m ${name}`,
          );
        }
        return openModel(name, cacheAndSpeculation(name));
      };
      const session = new ChatSession(
        model,
        modelName,
        { ...settings, maxTokens, maxTokensChosen: maxTokensFlag !== undefined },
        say,
        openSwitched,
      );
      if (input.interactive)
        say(`chatting with ${args.model ?? "the default model"}; /help for commands, Ctrl-D to leave`);

      // Piped, an answer that failed (a line over the context, a provider's error) makes the
      // exit status 1 once the other lines are answered, as `mlx run` ends on it: a script sees it.
      let failedAnswers = 0;
      for (;;) {
        const message = await input.read();
        if (message === null) break;
        const { text } = message;
        if (text.trim() === "") continue;
        if (message.command && text.startsWith("/")) {
          if (!(await input.runCommand((lendKeys) => runCommand(session, text, lendKeys)))) break;
          continue;
        }
        const controller = new AbortController();
        const stop = () => controller.abort();
        // Ctrl-C typed in the terminal is a key (it stays in raw mode); the signal can still come from kill.
        process.on("SIGINT", stop);
        input.pauseForAnswer(stop);
        try {
          await session.answer(text, (chunk) => process.stdout.write(chunk), controller.signal);
        } catch (error) {
          say(`error: ${errorLine(error)}`);
          failedAnswers++;
        } finally {
          process.off("SIGINT", stop);
          input.resumeAfterAnswer();
        }
      }
      input.close();
      session.conversation.dispose();
      if (!input.interactive && failedAnswers > 0) process.exitCode = 1;
    } catch (error) {
      input?.close();
      fail(error, verbose);
    }
  },
});

/** Where a name's weights are on disk now, found without pulling or loading anything (undefined: nowhere yet). */
function locatedPath(name: string): string | undefined {
  try {
    return locateModel(name).path;
  } catch {
    return undefined; // a name that cannot be a model here (a remote alias, a folder of several GGUFs)
  }
}
