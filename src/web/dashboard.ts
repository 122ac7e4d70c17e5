// The dashboard: one frame a second from /dashboard/events (the figures of /stats, tokens
// generated, latency percentiles, the requests in flight), drawn as uPlot charts and tables.
import uPlot from "uplot";
import { formatBytes } from "../format";
import { api, errorMessage, events, keyControl } from "./lib/api";

interface ModelStats {
  name: string;
  active_requests: number;
  running: number;
  max_batch?: number;
  prefill_chunk?: number;
  tuner?: { target_itl_ms: number; estimated_p99_itl_ms: number | null };
  prefix_cache?: { hits: number; misses: number };
  keep_alive_seconds: number;
  expires_at: string | null;
  weight_bytes: number;
  context_length: number;
}
type Percentiles = { p50: number; p90: number; p99: number } | null;
interface Frame {
  time: number;
  stats: {
    uptime_seconds: number;
    /** waiting_for_model: requests waiting for their model to load, or for room to load it (in no queue yet). */
    queue: { running: number; waiting: number; waiting_for_model: number };
    models: ModelStats[];
    memory: { active: number; peak: number };
  };
  generated_tokens: number;
  ttft_seconds: Percentiles;
  itl_seconds: Percentiles;
  in_flight: { id: number; model: string; age_seconds: number; prompt_tokens: number; tokens: number }[];
}

/** Points kept per series (five minutes at one frame a second). */
const KEEP = 300;
/** The least time the time axis spans, in seconds (one point, or a few, at the start). */
const MIN_SPAN_SECONDS = 60;
const palette = ["#2563eb", "#f97316", "#16a34a", "#dc2626", "#9333ea"];
const css = (name: string) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();

/** One chart: a time axis and a few series, fed one point per frame. */
const darkScheme = matchMedia("(prefers-color-scheme: dark)");

class Chart {
  readonly element = document.createElement("div");
  readonly #series: string[];
  readonly #data: (number | null)[][];
  #plot?: uPlot;
  readonly #resize = new ResizeObserver(() => this.#plot?.setSize(this.#size()));
  /** Axis colours come from the page's scheme: a change of scheme draws the chart anew. */
  readonly #redraw = () => this.#draw();

  constructor(parent: HTMLElement, title: string, series: string[], unit: string) {
    this.element.className = "chart";
    this.element.dataset.title = title;
    const heading = document.createElement("h3");
    heading.textContent = `${title} (${unit})`;
    this.element.append(heading);
    parent.append(this.element);
    this.#series = series;
    this.#data = [[], ...series.map(() => [])];
    this.#draw();
    this.#resize.observe(this.element);
    darkScheme.addEventListener("change", this.#redraw);
  }

  #size(): { width: number; height: number } {
    return { width: this.element.clientWidth - 8, height: 160 };
  }

  #draw(): void {
    this.#plot?.destroy();
    const axis = {
      stroke: css("--muted"),
      grid: { stroke: css("--line"), width: 1 },
      ticks: { stroke: css("--line"), width: 1 },
    };
    this.#plot = new uPlot(
      {
        ...this.#size(),
        series: [
          {},
          ...this.#series.map((label, i) => ({
            label,
            stroke: palette[i % palette.length],
            width: 1.5,
            points: { show: false },
          })),
        ],
        axes: [axis, { ...axis, size: 60 }],
        scales: {
          // From the first point to the last, a minute at least. uPlot widens a single point's
          // range itself (by 86400 / ms: 1000 days for times in seconds), before this sees it, and
          // the axis showed years (2027, 2028, …): the range is taken from the times themselves.
          x: {
            time: true,
            range: (u, min, max) => {
              const times = u.data[0];
              if (times.length === 0) return [min, max];
              const first = times[0]!;
              return [first, Math.max(times.at(-1)!, first + MIN_SPAN_SECONDS)];
            },
          },
          y: { range: (_u, _min, max) => [0, Math.max((max ?? 0) * 1.1, 1)] },
        },
        hooks: {
          // The time axis' range, in the page (uPlot draws on a canvas): what the axis spans.
          setScale: [
            (u, key) => {
              if (key !== "x") return;
              this.element.dataset.timeFrom = String(u.scales.x!.min);
              this.element.dataset.timeTo = String(u.scales.x!.max);
            },
          ],
        },
        cursor: { drag: { x: false, y: false } },
        legend: { live: false },
      },
      this.#data as uPlot.AlignedData,
      this.element,
    );
  }

  push(time: number, values: (number | null | undefined)[]): void {
    this.#data[0]!.push(time);
    values.forEach((v, i) => this.#data[i + 1]!.push(v ?? null));
    if (this.#data[0]!.length > KEEP) for (const column of this.#data) column.shift();
    this.#plot!.setData(this.#data as uPlot.AlignedData);
    this.element.dataset.points = String(this.#data[0]!.length);
  }

  /** A point of no values: the line breaks there rather than join the figures either side. */
  gap(time: number): void {
    this.push(
      time,
      this.#series.map(() => null),
    );
  }

  remove(): void {
    darkScheme.removeEventListener("change", this.#redraw);
    this.#resize.disconnect();
    this.#plot!.destroy();
    this.element.remove();
  }
}

const $ = (selector: string) => document.querySelector<HTMLElement>(selector)!;
const chartsRoot = $("#charts");
const charts = {
  tokens: new Chart(chartsRoot, "Output tokens", ["tokens/s"], "per second"),
  requests: new Chart(chartsRoot, "Requests", ["running", "waiting", "waiting for a model"], "count"),
  ttft: new Chart(chartsRoot, "Time to first token, last 10 s", ["p50", "p90", "p99"], "ms"),
  itl: new Chart(chartsRoot, "Inter-token latency, last 10 s", ["p50", "p90", "p99"], "ms"),
  memory: new Chart(chartsRoot, "MLX memory", ["active", "peak"], "MB"),
};

/** Each loaded model's own charts: its batch, the tuner's moves, its prefix cache. */
class ModelPanel {
  readonly element = document.createElement("div");
  readonly batch: Chart;
  /** Only when the tuner is on (--target-itl-ms). */
  readonly tuner?: Chart;
  readonly chunk: Chart;
  readonly cache: Chart;
  constructor(name: string, tuned: boolean) {
    this.element.className = "model-panel";
    const heading = document.createElement("h2");
    heading.textContent = name;
    const grid = document.createElement("div");
    grid.className = "charts";
    this.element.append(heading, grid);
    $("#per-model").append(this.element);
    this.batch = new Chart(grid, "Decode batch", ["batch size", "batch limit"], "sequences");
    if (tuned) this.tuner = new Chart(grid, "Tuner", ["target ITL", "estimated P99 ITL"], "ms");
    this.chunk = new Chart(grid, "Prefill chunk", ["chunk limit"], "tokens");
    this.cache = new Chart(grid, "Prefix cache hit rate", ["hit rate"], "%");
  }
  get charts(): Chart[] {
    return [this.batch, this.tuner, this.chunk, this.cache].filter((chart) => chart !== undefined);
  }
  remove(): void {
    for (const chart of this.charts) chart.remove();
    this.element.remove();
  }
}
const panels = new Map<string, ModelPanel>();

const ms = (p: Percentiles, k: "p50" | "p90" | "p99") => (p ? p[k] * 1000 : null);
/** Megabytes in the decimal units formatBytes shows (those of `mlx list` and Ollama). */
const mb = (bytes: number) => bytes / 1e6;

let previous: Frame | undefined;

function show(frame: Frame): void {
  const { stats } = frame;
  const rate =
    previous && frame.time > previous.time
      ? (frame.generated_tokens - previous.generated_tokens) / (frame.time - previous.time)
      : null;
  previous = frame;
  const t = frame.time;
  charts.tokens.push(t, [rate]);
  charts.requests.push(t, [stats.queue.running, stats.queue.waiting, stats.queue.waiting_for_model]);
  charts.ttft.push(t, [ms(frame.ttft_seconds, "p50"), ms(frame.ttft_seconds, "p90"), ms(frame.ttft_seconds, "p99")]);
  charts.itl.push(t, [ms(frame.itl_seconds, "p50"), ms(frame.itl_seconds, "p90"), ms(frame.itl_seconds, "p99")]);
  charts.memory.push(t, [mb(stats.memory.active), mb(stats.memory.peak)]);

  for (const m of stats.models) {
    let panel = panels.get(m.name);
    if (!panel) panels.set(m.name, (panel = new ModelPanel(m.name, m.tuner !== undefined)));
    panel.batch.push(t, [m.running, m.max_batch]);
    panel.tuner?.push(t, [m.tuner?.target_itl_ms, m.tuner?.estimated_p99_itl_ms]);
    panel.chunk.push(t, [m.prefill_chunk]);
    const lookups = m.prefix_cache ? m.prefix_cache.hits + m.prefix_cache.misses : 0;
    panel.cache.push(t, [lookups > 0 ? (100 * m.prefix_cache!.hits) / lookups : null]);
  }
  for (const [name, panel] of panels)
    if (!stats.models.some((m) => m.name === name)) {
      panel.remove();
      panels.delete(name);
    }

  $("#tokens-per-second").textContent = rate === null ? "–" : rate.toFixed(1);
  $("#running").textContent = String(stats.queue.running);
  $("#waiting").textContent = String(stats.queue.waiting);
  $("#waiting-for-model").textContent = String(stats.queue.waiting_for_model);
  $("#loaded").textContent = String(stats.models.length);
  $("#memory-active").textContent = formatBytes(stats.memory.active);
  $("#memory-peak").textContent = formatBytes(stats.memory.peak);
  $("#status").textContent = `up ${Math.round(stats.uptime_seconds)} s`;

  fillTable(
    "#in-flight",
    frame.in_flight.map((f) => [f.model, `${f.age_seconds.toFixed(1)} s`, String(f.prompt_tokens), String(f.tokens)]),
    "none",
  );
  fillTable(
    "#models",
    stats.models.map((m) => [
      m.name,
      formatBytes(m.weight_bytes),
      String(m.context_length),
      String(m.active_requests),
      unloadsIn(m, frame.time),
    ]),
    "none loaded",
  );
}

/**
 * When an idle model unloads, counted from `now` (the frame's time, in seconds): by the server's
 * clock, as its expires_at is, since the browser's may be off (a dashboard opened on another machine).
 */
function unloadsIn(m: ModelStats, now: number): string {
  if (m.keep_alive_seconds < 0) return "kept loaded";
  if (!m.expires_at) return m.active_requests > 0 ? "in use" : "–";
  return `${Math.max(0, Math.round(Date.parse(m.expires_at) / 1000 - now))} s`;
}

function fillTable(selector: string, rows: string[][], empty: string): void {
  const body = $(`${selector} tbody`);
  if (rows.length === 0) {
    const cell = document.createElement("td");
    cell.colSpan = $(`${selector} thead tr`).childElementCount;
    cell.className = "empty";
    cell.textContent = empty;
    body.replaceChildren(document.createElement("tr"));
    body.firstElementChild!.append(cell);
    return;
  }
  body.replaceChildren(
    ...rows.map((cells) => {
      const row = document.createElement("tr");
      row.append(...cells.map((text) => Object.assign(document.createElement("td"), { textContent: text })));
      return row;
    }),
  );
}

/** Drops the feed (or the pause before connecting again) to connect anew at once. */
let reconnect = () => {};

/** Reads the feed, reconnecting after a pause if it drops. */
async function follow(): Promise<void> {
  for (;;) {
    const connection = new AbortController();
    reconnect = () => connection.abort();
    try {
      const response = await api("dashboard/events", { signal: connection.signal });
      if (!response.ok) throw new Error(await errorMessage(response));
      for await (const data of events(response)) show(JSON.parse(data));
      throw new Error("the feed ended");
    } catch (error) {
      $("#status").textContent = `disconnected: ${(error as Error).message}; retrying…`;
      // The last figures are no longer true: a stopped server is not still running requests.
      for (const tile of document.querySelectorAll("#tiles strong")) tile.textContent = "–";
      fillTable("#in-flight", [], "unknown while disconnected");
      fillTable("#models", [], "unknown while disconnected");
      // The charts break after the last frame: no line across the time nothing was known.
      if (previous) {
        const gapAt = previous.time + 0.5; // before any frame of the server's, once back
        for (const chart of [...Object.values(charts), ...[...panels.values()].flatMap((p) => p.charts)])
          chart.gap(gapAt);
      }
      previous = undefined;
      await new Promise<void>((resolve) => {
        if (connection.signal.aborted) return resolve();
        const pause = setTimeout(resolve, 2000);
        connection.signal.addEventListener("abort", () => {
          clearTimeout(pause);
          resolve();
        });
      });
    }
  }
}
// A key given, changed or forgotten: the feed connects with it (or, forgotten, stops showing the server's figures).
keyControl($("#api-key") as HTMLButtonElement, () => reconnect());
void follow();
