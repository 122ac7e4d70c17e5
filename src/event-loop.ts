// Long synchronous work (a conversion, a pipeline's steps) hands the event loop a turn now and
// then, so signals, timers and sockets are served meanwhile (a server loading a model keeps
// answering and streaming).

/** The longest delay a timer takes (2^31 - 1 ms, about 24.8 days): past it, it fires at once. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/** Resolves after the event loop has run once: pending I/O, signals (Ctrl-C) and timers first. */
export const nextTurn = () => new Promise<void>((resolve) => setImmediate(resolve));

/** Long synchronous work written as a generator that pauses (yield) between its pieces. */
export type Steps<T> = Generator<void, T>;

/** Runs `steps` to the end without pausing. */
export function runSteps<T>(steps: Steps<T>): T {
  for (;;) {
    const step = steps.next();
    if (step.done) return step.value;
  }
}

/**
 * Runs `steps` to the end, giving the event loop a turn at each pause; a `signal` aborted
 * meanwhile stops them at the next pause (its reason thrown).
 */
export async function runStepsAsync<T>(steps: Steps<T>, signal?: AbortSignal): Promise<T> {
  for (;;) {
    const step = steps.next();
    if (step.done) return step.value;
    await nextTurn();
    signal?.throwIfAborted();
  }
}
