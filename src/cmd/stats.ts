// Human-readable speed and memory figures, as `--verbose` prints them.
import { formatBytes } from "../format";
import type { CompletionStats } from "../engine/generate";
import { acceptanceRate } from "../engine/speculative";

export function formatStats(s: CompletionStats): string {
  const drafted = { drafted: s.draftedTokens, accepted: s.acceptedTokens };
  return [
    `prompt:     ${s.promptTokens} tokens${s.cachedTokens > 0 ? ` (${s.cachedTokens} cached)` : ""}, ${s.promptTokensPerSecond.toFixed(2)} tokens/s`,
    `generation: ${s.generatedTokens} tokens, ${s.generationTokensPerSecond.toFixed(2)} tokens/s`,
    ...(s.draftedTokens > 0
      ? [
          `speculation: ${s.acceptedTokens} of ${s.draftedTokens} drafted tokens accepted (${(100 * acceptanceRate(drafted)).toFixed(1)}%)`,
        ]
      : []),
    `time to first token: ${s.timeToFirstTokenSeconds.toFixed(3)} s`,
    `peak memory: ${formatBytes(s.peakMemoryBytes)}`,
  ].join("\n");
}
