// Transfer progress on stderr (stdout carries only answers). On a terminal: one bar line
// redrawn in place with bytes, speed and ETA. Elsewhere (logs, CI, pipes): nothing while it
// runs and a single summary line at the end, so logs stay readable.
import { formatBytes } from "../format";
import type { DownloadProgress } from "./download";

export interface ProgressReporter {
  update(progress: DownloadProgress): void;
  /** Ends the display: leaves the final bar on a terminal, prints the summary line elsewhere. */
  finish(): void;
}

export interface ProgressStream {
  write(text: string): unknown;
  isTTY?: boolean;
  columns?: number;
}

const REDRAW_INTERVAL_MS = 100;

export function createProgressReporter(
  label: string,
  stream: ProgressStream = process.stderr,
  now: () => number = () => performance.now(),
): ProgressReporter {
  // The clock starts at the first update: time spent finding the file is not transfer time.
  let startedAt = 0;
  let started = false;
  // Bytes that came over the network: what an update adds to the last one, unless those bytes
  // were on disk already (a resumed partial file, a file kept from before).
  let transferred = 0;
  const resumes: { file?: string; at: number }[] = [];
  let last: DownloadProgress = { received: 0 };
  let lastAt = 0;
  let drawnAt = -Infinity;
  let drawn = false;

  // Measured up to the last update, so work done after the transfer does not dilute it.
  const speed = (): number => {
    const seconds = (lastAt - startedAt) / 1000;
    return seconds > 0 ? transferred / seconds : 0;
  };
  const resumedText = () => resumes.map((r) => `${r.file ? `${r.file} ` : ""}at ${formatBytes(r.at)}`).join(", ");

  const draw = () => {
    const rate = speed();
    const total = last.total;
    const amount = total ? `${formatBytes(last.received)}/${formatBytes(total)}` : formatBytes(last.received);
    const eta = total && rate > 0 ? `  ETA ${formatDuration((total - last.received) / rate)}` : "";
    const text = `${amount}  ${formatBytes(rate)}/s${eta}`;
    const width = Math.max(10, Math.min(40, (stream.columns ?? 80) - label.length - text.length - 6));
    const bar = total ? ` [${renderBar(last.received / total, width)}]` : "";
    stream.write(`\r${label}${bar} ${text}\x1b[K`);
    drawn = true;
  };

  return {
    update(progress) {
      lastAt = now();
      if (!started) {
        started = true;
        startedAt = lastAt;
      } else if (progress.resumedAt === undefined && !progress.onDisk)
        transferred += Math.max(0, progress.received - last.received);
      if (progress.resumedAt) resumes.push({ file: progress.file, at: progress.resumedAt });
      last = progress;
      if (!stream.isTTY) return;
      const complete = progress.total !== undefined && progress.received >= progress.total;
      if (!complete && lastAt - drawnAt < REDRAW_INTERVAL_MS) return;
      drawnAt = lastAt;
      draw();
    },
    finish() {
      if (stream.isTTY) {
        if (!drawn) return;
        draw();
        stream.write("\n");
        if (resumes.length > 0) stream.write(`${label}: resumed ${resumedText()}\n`);
        return;
      }
      if (!started) return;
      const seconds = (lastAt - startedAt) / 1000;
      const resumed = resumes.length > 0 ? `, resumed ${resumedText()}` : "";
      stream.write(
        `${label}: ${formatBytes(transferred)} in ${seconds.toFixed(1)} s (${formatBytes(speed())}/s)${resumed}\n`,
      );
    },
  };
}

function renderBar(fraction: number, width: number): string {
  const filled = Math.round(Math.min(1, Math.max(0, fraction)) * width);
  return "#".repeat(filled) + "-".repeat(width - filled);
}

function formatDuration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const rest = String(s % 60).padStart(2, "0");
  return h > 0 ? `${h}:${String(m).padStart(2, "0")}:${rest}` : `${m}:${rest}`;
}
