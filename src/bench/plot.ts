// Hand-written SVG charts for `mlx bench --plot`: bars of tokens/s per model with error bars
// (model and prompt-suite modes), or lines of throughput and P99 latency against
// concurrency (server mode). No dependency; the SVG stands alone.

const palette = [
  "#4e79a7",
  "#f28e2b",
  "#59a14f",
  "#e15759",
  "#76b7b2",
  "#edc948",
  "#b07aa1",
  "#ff9da7",
  "#9c755f",
  "#bab0ac",
];
const font = `font-family="system-ui, -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif"`;

export function escapeXml(s: string): string {
  return s.replace(/[<>&"']/g, (c) => ({ "<": "&lt;", ">": "&gt;", "&": "&amp;", '"': "&quot;", "'": "&apos;" })[c]!);
}

/** A round axis maximum at or above `v`, and its tick step (about 5 ticks). */
export function niceScale(v: number): { max: number; step: number } {
  if (!Number.isFinite(v) || v <= 0) return { max: 1, step: 0.2 };
  const rough = v / 5;
  const mag = 10 ** Math.floor(Math.log10(rough));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= rough)!;
  return { max: Math.ceil(v / step - 1e-9) * step, step };
}

const num = (v: number) => {
  const a = Math.abs(v);
  if (a === 0) return "0";
  if (a >= 100) return v.toFixed(0);
  if (a >= 10) return v.toFixed(1);
  if (a >= 1) return v.toFixed(2);
  return v.toPrecision(2);
};
const clip = (s: string, n: number) => (s.length > n ? `${s.slice(0, n - 1)}…` : s);
const r1 = (v: number) => Math.round(v * 10) / 10;

interface Frame {
  x: number;
  y: number;
  w: number;
  h: number;
}

function svg(width: number, height: number, title: string, subtitle: string, body: string[]): string {
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" ${font}>`,
    `<rect width="${width}" height="${height}" fill="#ffffff"/>`,
    `<text x="24" y="34" font-size="20" font-weight="600" fill="#222">${escapeXml(title)}</text>`,
    `<text x="24" y="56" font-size="13" fill="#666">${escapeXml(subtitle)}</text>`,
    ...body,
    "</svg>",
    "",
  ].join("\n");
}

/** Horizontal gridlines, y tick labels, the panel title and the y-axis label. */
function axes(f: Frame, title: string, yLabel: string, max: number, step: number): string[] {
  let decimals = 0;
  while (decimals < 6 && Math.abs(step * 10 ** decimals - Math.round(step * 10 ** decimals)) > 1e-6) decimals++;
  const out: string[] = [
    `<text x="${f.x}" y="${f.y - 14}" font-size="15" font-weight="600" fill="#333">${escapeXml(title)}</text>`,
  ];
  for (let v = 0; v <= max + step / 1000; v += step) {
    const y = r1(f.y + f.h - (v / max) * f.h);
    out.push(
      `<line x1="${f.x}" x2="${f.x + f.w}" y1="${y}" y2="${y}" stroke="${v === 0 ? "#888" : "#e5e5e5"}" stroke-width="1"/>`,
    );
    out.push(
      `<text x="${f.x - 8}" y="${r1(y + 4)}" font-size="11" fill="#666" text-anchor="end">${v.toFixed(decimals)}</text>`,
    );
  }
  const cy = f.y + f.h / 2;
  out.push(
    `<text x="${f.x - 52}" y="${cy}" font-size="12" fill="#555" text-anchor="middle" transform="rotate(-90 ${f.x - 52} ${cy})">${escapeXml(yLabel)}</text>`,
  );
  return out;
}

export interface BarSeries {
  /** Panel title, e.g. "Prompt processing (512 tokens)". */
  title: string;
  yLabel: string;
  bars: { label: string; mean: number; sd: number }[];
}

/** One panel per series, one bar per model (same colour across panels), mean ± sd error bars. */
export function barChart(title: string, subtitle: string, panels: BarSeries[]): string {
  const models = panels[0]?.bars.length ?? 0;
  const panelW = Math.max(300, 90 + models * 90);
  const width = 40 + panels.length * (panelW + 90);
  const height = 400;
  const body: string[] = [];
  panels.forEach((p, pi) => {
    const f: Frame = { x: 90 + pi * (panelW + 90), y: 100, w: panelW, h: 250 };
    const top = Math.max(
      0,
      ...p.bars.map((b) => (Number.isFinite(b.mean) ? b.mean + (Number.isFinite(b.sd) ? b.sd : 0) : 0)),
    );
    const { max, step } = niceScale(top * 1.12);
    body.push(...axes(f, p.title, p.yLabel, max, step));
    const slot = f.w / Math.max(1, p.bars.length);
    const barW = Math.min(64, slot * 0.6);
    p.bars.forEach((b, i) => {
      const cx = f.x + slot * (i + 0.5);
      const colour = palette[i % palette.length]!;
      const y = (v: number) => r1(f.y + f.h - (Math.max(0, Math.min(v, max)) / max) * f.h);
      if (Number.isFinite(b.mean)) {
        body.push(
          `<rect x="${r1(cx - barW / 2)}" y="${y(b.mean)}" width="${r1(barW)}" height="${r1(f.y + f.h - y(b.mean))}" fill="${colour}" rx="2"><title>${escapeXml(`${b.label}: ${num(b.mean)} ± ${num(b.sd)}`)}</title></rect>`,
        );
        if (Number.isFinite(b.sd) && b.sd > 0) {
          const lo = y(b.mean - b.sd);
          const hi = y(b.mean + b.sd);
          body.push(
            `<path d="M${r1(cx)} ${lo}V${hi}M${r1(cx - 8)} ${lo}H${r1(cx + 8)}M${r1(cx - 8)} ${hi}H${r1(cx + 8)}" stroke="#222" stroke-width="1.5" fill="none"/>`,
          );
        }
        const labelY = r1(y(b.mean + (Number.isFinite(b.sd) ? b.sd : 0)) - 7);
        const digits = Math.abs(b.mean) >= 100 ? 0 : Math.abs(b.mean) >= 10 ? 1 : 2;
        body.push(
          `<text x="${r1(cx)}" y="${labelY}" font-size="12" font-weight="600" fill="#222" text-anchor="middle">${b.mean.toFixed(digits)}${b.sd > 0 ? ` ± ${b.sd.toFixed(digits)}` : ""}</text>`,
        );
      } else {
        body.push(
          `<text x="${r1(cx)}" y="${f.y + f.h - 8}" font-size="12" fill="#999" text-anchor="middle">n/a</text>`,
        );
      }
      body.push(
        `<text x="${r1(cx)}" y="${f.y + f.h + 20}" font-size="12" fill="#333" text-anchor="middle">${escapeXml(clip(b.label, Math.max(8, Math.floor(slot / 7))))}<title>${escapeXml(b.label)}</title></text>`,
      );
    });
  });
  return svg(width, height, title, subtitle, body);
}

export interface LineSeries {
  name: string;
  values: number[];
}
export interface LinePanel {
  title: string;
  yLabel: string;
  series: LineSeries[];
}

/** Panels of lines over the same x categories (concurrency levels), with markers and a legend. */
export function lineChart(title: string, subtitle: string, xLabel: string, xs: number[], panels: LinePanel[]): string {
  const panelW = 320;
  const width = 40 + panels.length * (panelW + 100);
  const height = 470;
  const body: string[] = [];
  let colourIndex = 0;
  panels.forEach((p, pi) => {
    const f: Frame = { x: 100 + pi * (panelW + 100), y: 100, w: panelW, h: 250 };
    const top = Math.max(0, ...p.series.flatMap((s) => s.values.filter(Number.isFinite)));
    const { max, step } = niceScale(top * 1.1);
    body.push(...axes(f, p.title, p.yLabel, max, step));
    const px = (i: number) => r1(xs.length === 1 ? f.x + f.w / 2 : f.x + 16 + (i / (xs.length - 1)) * (f.w - 32));
    const py = (v: number) => r1(f.y + f.h - (v / max) * f.h);
    xs.forEach((x, i) =>
      body.push(`<text x="${px(i)}" y="${f.y + f.h + 18}" font-size="11" fill="#666" text-anchor="middle">${x}</text>`),
    );
    body.push(
      `<text x="${f.x + f.w / 2}" y="${f.y + f.h + 38}" font-size="12" fill="#555" text-anchor="middle">${escapeXml(xLabel)}</text>`,
    );
    p.series.forEach((s, si) => {
      const colour = palette[colourIndex++ % palette.length]!;
      const dash = si % 2 === 1 ? ` stroke-dasharray="6 4"` : "";
      const points = s.values.map((v, i) => (Number.isFinite(v) ? `${px(i)},${py(v)}` : "")).filter(Boolean);
      if (points.length > 1)
        body.push(`<polyline points="${points.join(" ")}" fill="none" stroke="${colour}" stroke-width="2.5"${dash}/>`);
      s.values.forEach((v, i) => {
        if (Number.isFinite(v))
          body.push(
            `<circle cx="${px(i)}" cy="${py(v)}" r="4" fill="${colour}"><title>${escapeXml(`${s.name} at ${xs[i]}: ${num(v)}`)}</title></circle>`,
          );
      });
      const ly = f.y + f.h + 62 + si * 18;
      body.push(
        `<line x1="${f.x}" x2="${f.x + 24}" y1="${ly - 4}" y2="${ly - 4}" stroke="${colour}" stroke-width="2.5"${dash}/>`,
      );
      body.push(`<text x="${f.x + 32}" y="${ly}" font-size="12" fill="#333">${escapeXml(s.name)}</text>`);
    });
  });
  return svg(width, height, title, subtitle, body);
}
