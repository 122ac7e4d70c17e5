// A provider's connections: at most `max` requests in flight at once (fetch keeps the sockets
// alive between them, so this bounds the connections in use), the rest waiting in a bounded
// first-come queue. A request whose client goes away leaves the queue at once.
import { ProviderError } from "../errors";

export class ConnectionPool {
  #inUse = 0;
  readonly #waiting: { grant: () => void; onAbort: () => void; signal?: AbortSignal }[] = [];

  constructor(
    readonly max: number,
    readonly maxQueue: number,
    /** Names the provider in errors. */
    readonly label: string,
  ) {}

  get inUse(): number {
    return this.#inUse;
  }

  get waiting(): number {
    return this.#waiting.length;
  }

  /** Waits for a free connection; resolves to its release (call it once). */
  acquire(signal?: AbortSignal): Promise<() => void> {
    signal?.throwIfAborted();
    if (this.#inUse < this.max) return Promise.resolve(this.#take());
    if (this.#waiting.length >= this.maxQueue)
      return Promise.reject(
        new ProviderError(
          `provider ${this.label}: all ${this.max} connections are busy and ${this.maxQueue} requests already wait`,
          "queue_full",
          1,
        ),
      );
    return new Promise((resolve, reject) => {
      const waiter = {
        signal,
        grant: () => resolve(this.#take()),
        onAbort: () => {
          const at = this.#waiting.indexOf(waiter);
          if (at >= 0) this.#waiting.splice(at, 1);
          reject(signal?.reason);
        },
      };
      signal?.addEventListener("abort", waiter.onAbort, { once: true });
      this.#waiting.push(waiter);
    });
  }

  #take(): () => void {
    this.#inUse++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.#inUse--;
      const next = this.#waiting.shift();
      if (next) {
        next.signal?.removeEventListener("abort", next.onAbort);
        next.grant();
      }
    };
  }
}
