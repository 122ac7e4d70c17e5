// The browser pages: the chat at / and the dashboard at /dashboard, from assets compiled into
// the executable (src/web/, bundled by a macro), and the dashboard's live feed. The pages and
// their assets hold no data, so they are served without the API key (the page asks for it and
// sends it in a header); the feed, like every API route, needs it.
import { Hono } from "hono";
import { compress } from "hono/compress";
import { etag } from "hono/etag";
import { secureHeaders } from "hono/secure-headers";
import { streamSSE } from "hono/streaming";
import { bundle, source } from "../web/bundle" with { type: "macro" };
import { dashboardFeed } from "../web/feed";
import type { ServerState } from "../state";

const js = "text/javascript; charset=utf-8";
const css = "text/css; charset=utf-8";
const webAssets: Record<string, { body: string; type: string }> = {
  "chat.js": { body: bundle("chat.ts"), type: js },
  "chat.css": { body: bundle("chat.css"), type: css },
  "dashboard.js": { body: bundle("dashboard.ts"), type: js },
  "dashboard.css": { body: bundle("dashboard.css"), type: css },
};
const chatPage = source("chat.html");
const dashboardPage = source("dashboard.html");
const webPages: Record<string, string> = { "/": chatPage, "/dashboard": dashboardPage };

/**
 * Scripts and styles from this server only (none inline), connections only to it, images only
 * from it or data: URLs (so a model's Markdown cannot make the browser fetch elsewhere).
 */
const pageHeaders = secureHeaders({
  contentSecurityPolicy: {
    defaultSrc: ["'none'"],
    scriptSrc: ["'self'"],
    styleSrc: ["'self'"],
    imgSrc: ["'self'", "data:"],
    connectSrc: ["'self'"],
    baseUri: ["'none'"],
    formAction: ["'none'"],
    frameAncestors: ["'none'"],
  },
  referrerPolicy: "no-referrer",
});

/** Paths served without the API key: the pages (the dashboard's with a slash too), their assets. */
export const isPublicPage = (path: string) =>
  Object.hasOwn(webPages, path) || path === "/dashboard/" || path.startsWith("/web/");

/** How often the dashboard feed sends a frame. */
const FEED_INTERVAL_MS = 1000;

export function webRoutes(s: ServerState): Hono {
  const r = new Hono();
  r.use("/", pageHeaders, compress());
  r.use("/dashboard", pageHeaders, compress());
  r.use("/web/*", pageHeaders, compress(), etag());

  // A browser asking for / gets the chat; API clients (curl, Ollama's) still get the plain text.
  // Both answers vary with Accept: a cache (a reverse proxy's) must not hand one to the other.
  r.get("/", async (c, next) => {
    c.header("Vary", "Accept", { append: true });
    return (c.req.header("accept") ?? "").includes("text/html") ? c.html(chatPage) : next();
  });
  r.get("/dashboard", (c) => c.html(dashboardPage));
  // Typed with a slash, its relative assets would be looked for under /dashboard/: sent to the page,
  // by a relative address that holds behind a proxy's sub-path too.
  r.get("/dashboard/", (c) => c.redirect("../dashboard", 301));
  r.get("/web/:file", (c) => {
    const file = c.req.param("file");
    // Own names only: "/web/constructor" found Object's and failed on it (a 500, not a 404).
    const asset = Object.hasOwn(webAssets, file) ? webAssets[file] : undefined;
    if (!asset) return c.notFound();
    return c.body(asset.body, 200, { "Content-Type": asset.type, "Cache-Control": "no-cache" });
  });

  r.get("/dashboard/events", (c) =>
    streamSSE(c, async (stream) => {
      const frame = dashboardFeed(s);
      while (!stream.aborted && !stream.closed && !s.stopping) {
        await stream.writeSSE({ data: JSON.stringify(frame()) });
        await stream.sleep(FEED_INTERVAL_MS);
      }
    }),
  );
  return r;
}
