// A circuit breaker per provider: after `threshold` consecutive failed attempts it opens and
// requests fail at once (no connection, no wait) for the cool-down; then it half-opens and
// lets one request try: its success closes the circuit, its failure opens it again.
import { ProviderError } from "../errors";

export type CircuitState = "closed" | "open" | "half_open";

export class Circuit {
  #failures = 0;
  #openedAt = 0;
  #open = false;
  #trial = false;
  #lastError = "";

  constructor(
    readonly threshold: number,
    readonly cooldownMs: number,
    readonly label: string,
  ) {}

  get state(): CircuitState {
    if (!this.#open) return "closed";
    return performance.now() - this.#openedAt >= this.cooldownMs ? "half_open" : "open";
  }

  /** Throws while the circuit refuses requests; in half-open, lets exactly one through. */
  admit(): void {
    const state = this.state;
    if (state === "closed") return;
    if (state === "half_open" && !this.#trial) {
      this.#trial = true;
      return;
    }
    const leftMs = state === "open" ? this.cooldownMs - (performance.now() - this.#openedAt) : this.cooldownMs;
    const retryAfterS = Math.max(1, Math.ceil(leftMs / 1000));
    throw new ProviderError(
      `provider ${this.label} is unavailable: its circuit is open after ${this.#failures} consecutive failures (last: ${this.#lastError}); it is tried again in ${retryAfterS} s`,
      "circuit_open",
      retryAfterS,
    );
  }

  succeeded(): void {
    this.#failures = 0;
    this.#open = false;
    this.#trial = false;
  }

  /** A request let through ended with no verdict on the provider (its client went away). */
  abandoned(): void {
    this.#trial = false;
  }

  failed(reason: string): void {
    this.#failures++;
    this.#lastError = reason;
    if (this.#trial || this.#failures >= this.threshold) {
      this.#open = true;
      this.#openedAt = performance.now();
      this.#trial = false;
    }
  }
}
