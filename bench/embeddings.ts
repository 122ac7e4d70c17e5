// Embeddings: ours (src/engine/embed.ts, in process) against mlx-lm's forward pass to the final
// hidden states (bench/embeddings_peer.py), on the same converted directory and texts, rounds
// interleaved (the order alternating). Reports texts/s and tokens/s, and how far our vectors
// are from mlx-lm's (the largest difference of a component, and the lowest cosine).
//
//   node_modules/.bin/bun src/main.ts convert smollm2 .cache/bench/smollm2-mlx
//   node_modules/.bin/bun bench/embeddings.ts [--runs 3] [--texts 32] [--model .cache/bench/smollm2-mlx]
import { parseArgs } from "node:util";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { embed } from "../src/engine/embed";
import { loadModel } from "../src/models/load";
import { median, ratio } from "./lib";

const { values } = parseArgs({
  options: {
    runs: { type: "string", default: "3" },
    texts: { type: "string", default: "32" },
    model: { type: "string", default: ".cache/bench/smollm2-mlx" },
  },
});
const runs = Number(values.runs);
const subjects = [
  "The cat",
  "A small robot",
  "My neighbour",
  "The river",
  "An old train",
  "The committee",
  "A violinist",
];
const actions = ["sat quietly near", "argued loudly about", "slowly walked towards", "wrote a long letter to"];
const objects = [
  "the mat in the kitchen.",
  "the price of bread in the morning market.",
  "a distant mountain covered in snow.",
];
const texts = Array.from({ length: Number(values.texts) }, (_, i) =>
  `${subjects[i % subjects.length]} ${actions[i % actions.length]} ${objects[i % objects.length]}`.repeat(1 + (i % 3)),
);
const textsFile = join(mkdtempSync(join(tmpdir(), "mlx-embed-bench-")), "texts.json");
writeFileSync(textsFile, JSON.stringify(texts));

const lm = loadModel(values.model!);
const tokens = texts.reduce((n, t) => n + lm.tokenizer.encode(t, { addSpecialTokens: true }).length, 0);
await embed(lm, texts.slice(0, 2)); // warm up

const ours: number[] = [];
const peer: number[] = [];
let ourVectors: number[][] = [];
let peerVectors: number[][] = [];
const runOurs = async () => {
  const started = performance.now();
  ourVectors = (await embed(lm, texts)).vectors;
  ours.push((performance.now() - started) / 1000);
};
const runPeer = async () => {
  // One process per round (loading is not timed), warmed up on two texts as ours is.
  const proc = Bun.spawn([".cache/peers/venv/bin/python", "bench/embeddings_peer.py", values.model!, textsFile, "1"], {
    stdout: "pipe",
    stderr: "inherit",
  });
  const out = JSON.parse(await new Response(proc.stdout).text()) as { seconds: number[]; vectors: number[][] };
  if ((await proc.exited) !== 0) throw new Error("the mlx-lm peer failed");
  peer.push(out.seconds.at(-1)!);
  peerVectors = out.vectors;
};
for (let round = 0; round < runs; round++) {
  if (round % 2 === 0) {
    await runOurs();
    await runPeer();
  } else {
    await runPeer();
    await runOurs();
  }
}

let maxDiff = 0;
let minCosine = 1;
ourVectors.forEach((v, i) => {
  const p = peerVectors[i]!;
  minCosine = Math.min(
    minCosine,
    v.reduce((s, x, j) => s + x * p[j]!, 0),
  );
  v.forEach((x, j) => (maxDiff = Math.max(maxDiff, Math.abs(x - p[j]!))));
});
const perSecond = (seconds: number[], n: number) => n / median(seconds);
console.log(`${texts.length} texts, ${tokens} tokens, ${runs} rounds (medians)`);
console.log(`| | ours | mlx-lm | ours / mlx-lm |\n|---|---:|---:|---:|`);
console.log(
  `| texts/s | ${perSecond(ours, texts.length).toFixed(2)} | ${perSecond(peer, texts.length).toFixed(2)} | ${ratio(median(peer), median(ours))} |`,
);
console.log(
  `| tokens/s | ${perSecond(ours, tokens).toFixed(1)} | ${perSecond(peer, tokens).toFixed(1)} | ${ratio(median(peer), median(ours))} |`,
);
console.log(
  `rounds (s): ours ${ours.map((s) => s.toFixed(2)).join(", ")}; mlx-lm ${peer.map((s) => s.toFixed(2)).join(", ")}`,
);
console.log(`vectors: largest component difference ${maxDiff.toExponential(2)}, lowest cosine ${minCosine.toFixed(6)}`);
lm.free();
