// Human-readable speed and memory figures, as `--verbose` prints them.
import { formatBytes } from "../format";
import type { CompletionStats } from "../engine/generate";

export function formatStats(s: CompletionStats): string {
  return [
    `prompt:     ${s.promptTokens} tokens${s.cachedTokens > 0 ? ` (${s.cachedTokens} cached)` : ""}, ${s.promptTokensPerSecond.toFixed(2)} tokens/s`,
    `generation: ${s.generatedTokens} tokens, ${s.generationTokensPerSecond.toFixed(2)} tokens/s`,
    `time to first token: ${s.timeToFirstTokenSeconds.toFixed(3)} s`,
    `peak memory: ${formatBytes(s.peakMemoryBytes)}`,
  ].join("\n");
}
