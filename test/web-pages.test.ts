// The web pages over plain HTTP: what is served, under which headers, how heavy, behind which
// key; and the dashboard feed's figures against /stats.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { windowQuantile } from "../src/server/web/feed";
import { eventually, serve } from "./helpers/serve";
import { longTinyModel } from "./helpers/browser";
import type { RunningServer } from "../src/server/app";

let server: RunningServer;
let locked: RunningServer;
const key = "sekret-key-123";
beforeAll(() => {
  server = serve({ defaultModel: longTinyModel() });
  locked = serve({ apiKey: key });
});
afterAll(async () => {
  await server.stop();
  await locked.stop();
});

const html = { Accept: "text/html,application/xhtml+xml" };

/** The scripts and stylesheets a page links to, relative to it (so that a proxy may serve it under a sub-path). */
const assetsOf = (page: string) => [...page.matchAll(/(?:src|href)="(web\/[^"]+)"/g)].map((m) => m[1]!);

describe("the pages", () => {
  for (const path of ["/", "/dashboard"]) {
    test(`${path}: a Content-Security-Policy without inline scripts, and under 150 KB gzipped in all`, async () => {
      const r = await fetch(`${server.url}${path}`, { headers: html });
      expect(r.status).toBe(200);
      expect(r.headers.get("content-type")).toContain("text/html");
      const csp = r.headers.get("content-security-policy")!;
      expect(csp).toContain("script-src 'self'");
      expect(csp).toContain("default-src 'none'");
      expect(csp).not.toContain("unsafe-inline");
      const page = await r.text();
      // Every script comes from a file; no inline event handlers either.
      for (const tag of page.match(/<script[^>]*>/g) ?? []) expect(tag).toMatch(/ src="web\//);
      expect(page).not.toMatch(/<script[^>]*>(?!<\/script>)/);
      expect(page).not.toMatch(/\son[a-z]+=/i);
      const assets = assetsOf(page);
      expect(assets.length).toBe(2);
      let gzipped = Bun.gzipSync(page).length;
      for (const asset of assets) {
        const a = await fetch(new URL(asset, `${server.url}${path}`));
        expect(a.status).toBe(200);
        expect(a.headers.get("content-security-policy")).toBe(csp);
        gzipped += Bun.gzipSync(await a.text()).length;
      }
      expect(gzipped).toBeLessThan(150 * 1024);
    });
  }

  test("assets are sent compressed to a client that accepts it", async () => {
    const r = await fetch(`${server.url}/web/chat.js`, { headers: { "Accept-Encoding": "gzip" }, decompress: false });
    expect(r.headers.get("content-encoding")).toBe("gzip");
    expect(r.headers.get("content-type")).toContain("javascript");
  });

  test("/dashboard/ (typed with a slash) is sent to /dashboard, by a relative address", async () => {
    const slashed = await fetch(`${server.url}/dashboard/`, { redirect: "manual" });
    expect([slashed.status, slashed.headers.get("location")]).toEqual([301, "../dashboard"]);
    const followed = await fetch(`${server.url}/dashboard/`);
    expect([followed.url, followed.status]).toEqual([`${server.url}/dashboard`, 200]);
    expect(await followed.text()).toContain("<html");
  });

  test("HEAD answers with GET's headers, its Content-Length among them (it was 0), and no body", async () => {
    const headers = { ...html, "Accept-Encoding": "identity" };
    for (const path of ["/", "/dashboard", "/web/chat.js", "/web/dashboard.css", "/v1/models", "/web/nope.js"]) {
      const get = await fetch(`${server.url}${path}`, { headers });
      const length = (await get.arrayBuffer()).byteLength;
      const head = await fetch(`${server.url}${path}`, { method: "HEAD", headers });
      expect([path, head.status, head.headers.get("content-type"), head.headers.get("content-length")]).toEqual([
        path,
        get.status,
        get.headers.get("content-type"),
        String(length),
      ]);
      expect((await head.arrayBuffer()).byteLength).toBe(0);
    }
  });

  test("an unknown asset is a JSON 404, one named like a property of every object too (was a 500)", async () => {
    for (const name of ["nope.js", "__proto__", "constructor", "toString", "hasOwnProperty"]) {
      const r = await fetch(`${server.url}/web/${name}`);
      expect([name, r.status]).toEqual([name, 404]);
      expect(((await r.json()) as any).error).toBeDefined();
    }
  });

  test("GET / from a client that does not ask for HTML still answers as Ollama does", async () => {
    const r = await fetch(`${server.url}/`);
    expect(await r.text()).toBe("mlx is running");
  });

  test("GET / answers by Accept (the page or Ollama's text), and says so in Vary, so a proxy's cache keeps them apart", async () => {
    for (const headers of [html, {}]) {
      const r = await fetch(`${server.url}/`, { headers });
      await r.arrayBuffer();
      const vary = (r.headers.get("vary") ?? "").split(",").map((v) => v.trim().toLowerCase());
      expect(vary).toContain("accept");
    }
  });

  test("with --api-key: the pages and assets need no key, the feed and the API do", async () => {
    for (const path of ["/", "/dashboard", "/dashboard/", "/web/chat.js", "/web/dashboard.css"])
      expect((await fetch(`${locked.url}${path}`, { headers: html })).status).toBe(200);
    expect((await fetch(`${locked.url}/dashboard/events`)).status).toBe(401);
    expect((await fetch(`${locked.url}/v1/models`)).status).toBe(401);
    const r = await fetch(`${locked.url}/dashboard/events`, { headers: { Authorization: `Bearer ${key}` } });
    expect(r.status).toBe(200);
    expect(r.headers.get("content-type")).toContain("text/event-stream");
    await r.body!.cancel();
  });
});

/** The dashboard feed's frames, as they come. */
async function* frames(url: string): AsyncGenerator<any> {
  const r = await fetch(`${url}/dashboard/events`);
  const reader = r.body!.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let end: number;
      while ((end = buffer.indexOf("\n\n")) !== -1) {
        const data = buffer
          .slice(0, end)
          .split("\n")
          .find((l) => l.startsWith("data:"));
        buffer = buffer.slice(end + 2);
        if (data) yield JSON.parse(data.slice(5));
      }
    }
  } finally {
    await reader.cancel();
  }
}

describe("the dashboard feed", () => {
  test("once a second: the figures of /stats, the requests in flight and their tokens, latency percentiles", async () => {
    await eventually(async () => (await fetch(`${server.url}/health`)).status === 200, 30_000);
    const streams = Array.from({ length: 3 }, () =>
      fetch(`${server.url}/v1/completions`, {
        method: "POST",
        body: JSON.stringify({ prompt: "Once upon a time", max_tokens: 4000, stream: true }),
      }),
    );
    const responses = await Promise.all(streams);
    for (const r of responses) expect(r.status).toBe(200);
    const readers = responses.map((r) => r.body!.getReader());
    await Promise.all(readers.map((r) => r.read()));
    const feed = frames(server.url);
    const next = async () => (await feed.next()).value;
    const started = performance.now();
    const first = await next();
    await next();
    const third = await next();
    expect(performance.now() - started).toBeGreaterThan(1500); // one a second, not as fast as it can
    const stats: any = await (await fetch(`${server.url}/stats`)).json();
    expect(Object.keys(third.stats).sort()).toEqual(Object.keys(stats).sort());
    expect(third.stats.queue.running).toBe(3);
    expect(stats.queue.running).toBe(3);
    expect(third.in_flight.length).toBe(3);
    for (const f of third.in_flight) {
      expect(f.model).toBe(longTinyModel());
      expect(f.prompt_tokens).toBeGreaterThan(0);
      expect(f.tokens).toBeGreaterThan(0);
    }
    expect(third.time - first.time).toBeGreaterThanOrEqual(1.5);
    expect(third.generated_tokens).toBeGreaterThan(first.generated_tokens);
    expect(third.itl_seconds.p50).toBeGreaterThan(0);
    expect(third.itl_seconds.p99).toBeGreaterThanOrEqual(third.itl_seconds.p50);
    // A generation's time to first token is recorded when it ends.
    expect(third.ttft_seconds).toBeNull();
    await Promise.all(readers.map((r) => r.cancel()));
    await eventually(() => server.state.inflight.list.length === 0);
    const after = await next();
    expect(after.in_flight).toEqual([]);
    expect(after.ttft_seconds.p50).toBeGreaterThan(0);
    await feed.return(undefined);
  }, 60_000);

  test("a stopping server ends the feed rather than wait for the dashboard to close", async () => {
    const watched = serve();
    const feed = frames(watched.url);
    await feed.next();
    const started = performance.now();
    await watched.stop(20_000);
    expect(performance.now() - started).toBeLessThan(5_000);
    expect((await feed.next()).done).toBe(true);
  }, 30_000);
});

describe("windowQuantile", () => {
  const buckets = [1, 2, 4];
  test("interpolates inside the bucket over the observations between two snapshots", () => {
    const before = { counts: [10, 10, 10], count: 10 };
    // Since then: 2 at or below 1, 2 in (1, 2], 4 in (2, 4].
    const after = { counts: [12, 14, 18], count: 18 };
    expect(windowQuantile(buckets, before, after, 0.25)).toBe(1);
    expect(windowQuantile(buckets, before, after, 0.5)).toBe(2);
    expect(windowQuantile(buckets, before, after, 0.75)).toBe(3);
  });
  test("null with no observations; the largest bound for ones above every bucket", () => {
    const snapshot = { counts: [1, 1, 1], count: 1 };
    expect(windowQuantile(buckets, snapshot, snapshot, 0.5)).toBeNull();
    expect(windowQuantile(buckets, snapshot, { counts: [1, 1, 1], count: 3 }, 0.9)).toBe(4);
  });
});
