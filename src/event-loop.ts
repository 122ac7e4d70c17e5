// Long synchronous work (a conversion, a pipeline's steps) hands the event loop a turn now and
// then, so signals, timers and sockets are served meanwhile.

/** Resolves after the event loop has run once: pending I/O, signals (Ctrl-C) and timers first. */
export const nextTurn = () => new Promise<void>((resolve) => setImmediate(resolve));
