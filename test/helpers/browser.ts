// Headless Chromium (Debian's package, installed by scripts/setup.sh when run as root), driven
// by playwright-core: no browser download. Tests skip when no Chromium is on the PATH.
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium, type Browser, type Page } from "playwright-core";
import { writeTinyModel } from "./tiny-model";

export const chromiumPath = Bun.which("chromium") ?? Bun.which("chromium-browser") ?? Bun.which("google-chrome");

/** Chromium, with `args` added to its command line. */
export function launchBrowser(args: string[] = []): Promise<Browser> {
  // The sandbox needs user namespaces, which containers and root often lack.
  return chromium.launch({ executablePath: chromiumPath!, args: ["--no-sandbox", ...args], timeout: 30_000 });
}

/**
 * A page that records its console errors (CSP violations among them) and uncaught exceptions.
 * With `now`, the page's clock stays at that time (a browser on a machine whose clock is off).
 */
export async function openPage(
  browser: Browser,
  url: string,
  o: { colorScheme?: "light" | "dark"; width?: number; height?: number; now?: Date } = {},
): Promise<{ page: Page; errors: string[] }> {
  const context = await browser.newContext({
    colorScheme: o.colorScheme ?? "light",
    viewport: { width: o.width ?? 1200, height: o.height ?? 800 },
  });
  const page = await context.newPage();
  page.setDefaultTimeout(20_000);
  const errors: string[] = [];
  page.on("console", (m) => {
    if (m.type() === "error") errors.push(m.text());
  });
  page.on("pageerror", (e) => errors.push(e.message));
  if (o.now) await page.clock.setFixedTime(o.now);
  await page.goto(url);
  return { page, errors };
}

let longPath: string | undefined;
/** A tiny model with a long context, so that an answer runs for seconds (long enough to watch or stop). */
export function longTinyModel(): string {
  if (!longPath) {
    const root = mkdtempSync(join(tmpdir(), "mlx-web-"));
    process.env.MLX_HOME ??= join(root, "home");
    longPath = join(root, "tiny-long");
    writeTinyModel(longPath, { contextLength: 4096 });
  }
  return longPath;
}
