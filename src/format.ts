// How sizes are shown everywhere (the store, `mlx list`/`show`, bench reports, run and chat
// figures, the web dashboard): decimal units (1 MB = 1,000,000 bytes), as download sizes and
// Ollama show them. The dashboard bundles this file for the browser: no Node types here.
const units = ["B", "KB", "MB", "GB", "TB"];

export function formatBytes(bytes: number): string {
  if (!Number.isFinite(bytes) || bytes < 0) return "-";
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit++;
  }
  return unit === 0 ? `${Math.round(value)} B` : `${value.toFixed(1)} ${units[unit]}`;
}

/** A count of parameters as Ollama shows one: 135M, 1.2B. */
export function formatCount(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(1)}B`;
  if (n >= 1e6) return `${Math.round(n / 1e6)}M`;
  return `${Math.round(n / 1e3)}K`;
}

/** Why a file could not be opened or read, as the tail of a one-line error ("no such file" for the common case). */
export function fileErrorReason(error: unknown): string {
  const code = (error as { code?: string }).code;
  if (code === "ENOENT") return "no such file";
  if (code === "EISDIR") return "it is a directory";
  return (error as Error).message;
}

/**
 * Why a file could not be written, likewise: writing, ENOENT means the folder it goes in is
 * missing, ENOTDIR or EEXIST (mkdir) that a folder on its path is a file. Other errors lose
 * the path Node appends ("EACCES: permission denied, mkdir '/x/out.partial-123'"): the caller
 * names what it was writing.
 */
export function writeErrorReason(error: unknown): string {
  const code = (error as { code?: string }).code;
  if (code === "ENOENT") return "no such directory";
  if (code === "ENOTDIR" || code === "EEXIST") return "a folder on its path is a file";
  if (code === "EISDIR") return "it is a directory";
  return code ? (error as Error).message.split(",")[0]! : fileErrorReason(error);
}

/** Whether `error`, or an error it wraps (its cause), is a disk with no room left: ENOSPC, or EDQUOT (a full quota). */
export function noSpaceLeft(error: unknown): boolean {
  for (let e = error as { code?: unknown; cause?: unknown } | undefined; e; e = e.cause as typeof e)
    if (e.code === "ENOSPC" || e.code === "EDQUOT") return true;
  return false;
}

/**
 * `text` without its control characters, tab and newline aside: words another program sent (a
 * server's error message), quoted in ours, cannot recolour, retitle or redraw the terminal.
 */
export function withoutControlCharacters(text: string): string {
  return text.replace(/[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/g, "");
}

/** Columns padded to their widest cell, two spaces apart, a header first (as `ollama list` prints them). */
export function plainTable(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  return (
    [header, ...rows]
      .map((r) =>
        r
          .map((cell, i) => cell.padEnd(widths[i]!))
          .join("  ")
          .trimEnd(),
      )
      .join("\n") + "\n"
  );
}

/** A span of time in words, in its largest unit: "1 second", "5 minutes", "2 days" (`round` picks the whole number). */
export function durationInWords(seconds: number, round: (n: number) => number = Math.floor): string {
  // The unit is chosen after rounding: 59.7 s rounded is a minute, not "60 seconds".
  const [size, unit] = DURATION_UNITS.find(([size, , next]) => round(seconds / size) < next) ?? DURATION_UNITS.at(-1)!;
  const n = round(seconds / size);
  return `${n} ${unit}${n === 1 ? "" : "s"}`;
}

/** Each unit's size in seconds and how many of it make the next. */
const DURATION_UNITS = [
  [1, "second", 60],
  [60, "minute", 60],
  [3600, "hour", 24],
  [86400, "day", Infinity],
] as const;

/**
 * `word` as a shell reads it back whole, for a command we tell the user to run (a model named
 * `my model#2` would otherwise be cut at the space and the rest taken as a comment).
 */
export function shellWord(word: string): string {
  return /^[\w@%+=:,./-]+$/.test(word) ? word : `'${word.replaceAll("'", `'\\''`)}'`;
}
