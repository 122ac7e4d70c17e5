// Does a long chat stay responsive? Time to first token per turn when the conversation's KV
// cache is kept between turns (mlx chat), against prefilling the whole conversation again
// every turn. Same model, same messages, greedy, interleaved turn by turn.
//
//   node_modules/.bin/bun bench/chat-turns.ts [--turns 10] [--answer-tokens 16] [-m MODEL]
import { parseArgs } from "node:util";
import { Conversation } from "../src/engine/conversation";
import { defaultSampling } from "../src/engine/sampling";
import { loadModel } from "../src/models/load";
import { resolveModelPath } from "../src/store/resolve";

const { values } = parseArgs({
  options: {
    turns: { type: "string", default: "10" },
    "answer-tokens": { type: "string", default: "16" },
    model: { type: "string", short: "m" },
  },
});
const turns = Number(values.turns);
const maxTokens = Number(values["answer-tokens"]);
const lm = loadModel(await resolveModelPath(values.model));
const options = { sampling: defaultSampling, maxTokens };

async function ttft(c: Conversation, text: string) {
  const turn = c.turn(text, options);
  let step = await turn.next();
  while (!step.done) step = await turn.next();
  return step.value;
}

const kept = new Conversation(lm);
const rows: string[] = [];
for (let i = 1; i <= turns; i++) {
  const message = `Question ${i}: name one animal that lives in the sea.`;
  const reused = await ttft(kept, message);
  // The same conversation up to this turn, prefilled from scratch.
  const fresh = new Conversation(lm);
  fresh.messages = kept.messages.slice(0, -2);
  const scratch = await ttft(fresh, message);
  fresh.dispose();
  const line = `| ${i} | ${reused.info.newTokens} new + ${reused.info.reusedTokens} cached | ${(reused.result.stats.timeToFirstTokenSeconds * 1000).toFixed(0)} | ${scratch.info.newTokens} | ${(scratch.result.stats.timeToFirstTokenSeconds * 1000).toFixed(0)} |`;
  rows.push(line);
  console.error(line);
}
console.log(
  "| turn | prompt tokens (kept cache) | time to first token, kept cache (ms) | prompt tokens (from scratch) | time to first token, from scratch (ms) |",
);
console.log("|---:|---|---:|---:|---:|");
for (const r of rows) console.log(r);
