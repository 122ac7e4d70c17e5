// Three turns of a conversation over a ~3,300-token document against a running server (the
// default model as its own draft: `serve -m smollm2 --draft-model smollm2`), 8 tokens each,
// greedy, streamed: each turn's time to first token and to its last token, and the prompt
// tokens the server had cached. A follow-up turn repeats the history the turn before ended with.
//   node_modules/.bin/bun bench/draft-followup.ts http://127.0.0.1:PORT
const url = process.argv[2];
if (!url) throw new Error("usage: bun bench/draft-followup.ts <server URL>");

type Message = { role: string; content: string };

async function turn(messages: Message[]) {
  const started = performance.now();
  const response = await fetch(`${url}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      model: "smollm2",
      messages,
      max_tokens: 8,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    }),
  });
  let firstMs: number | undefined;
  let text = "";
  let cached: number | undefined;
  const decoder = new TextDecoder();
  let buffered = "";
  for await (const chunk of response.body!) {
    buffered += decoder.decode(chunk, { stream: true });
    const lines = buffered.split("\n");
    buffered = lines.pop()!;
    for (const line of lines) {
      if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
      const event = JSON.parse(line.slice("data: ".length));
      const content = event.choices?.[0]?.delta?.content;
      if (content) {
        firstMs ??= performance.now() - started;
        text += content;
      }
      if (event.usage) cached = event.usage.prompt_tokens_details?.cached_tokens;
    }
  }
  const round = (ms: number | undefined) => (ms === undefined ? null : Math.round(ms));
  return { text, result: { firstMs: round(firstMs), lastMs: round(performance.now() - started), cached } };
}

const document = Array.from(
  { length: 160 },
  (_, i) => `Line ${i}: the quick brown fox jumps over the lazy dog number ${i}.`,
).join("\n");
const history: Message[] = [{ role: "user", content: `Here is a document:\n${document}\nSummarize it.` }];
const results = [];
for (const next of ["And the first line?", "And the last?", undefined]) {
  const { text, result } = await turn(history);
  results.push(result);
  if (next) history.push({ role: "assistant", content: text }, { role: "user", content: next });
}
console.log(JSON.stringify(results));

export {}; // a module: top-level await
