// Prints each failed test's error again from bun test's JUnit report, so that the end of a long
// run's output (all that a CI log's tail keeps) says why a test failed, not only which.
//
//   bun scripts/test-failures.ts <junit.xml>
import { readFileSync } from "node:fs";

const linesEach = 40;
const report = readFileSync(process.argv[2]!, "utf8");

const entities: Record<string, string> = { lt: "<", gt: ">", amp: "&", quot: '"', apos: "'" };
const unescape = (text: string) =>
  text.replace(/&(#x[0-9a-f]+|#\d+|\w+);/gi, (whole, name: string) => {
    if (name.startsWith("#x") || name.startsWith("#X")) return String.fromCodePoint(Number.parseInt(name.slice(2), 16));
    if (name.startsWith("#")) return String.fromCodePoint(Number(name.slice(1)));
    return entities[name] ?? whole;
  });
const attribute = (tag: string, name: string) => unescape(new RegExp(` ${name}="([^"]*)"`).exec(tag)?.[1] ?? "");

const failures = [...report.matchAll(/<testcase\b[^>]*>\s*<failure\b[^>]*>([^<]*)<\/failure>/g)];
if (failures.length > 0)
  console.error(`\nWhy ${failures.length === 1 ? "the failed test" : `the ${failures.length} failed tests`} failed:`);
for (const [whole, body] of failures) {
  const testcase = /<testcase\b[^>]*>/.exec(whole)![0];
  const lines = unescape(body!).trimEnd().split("\n");
  const shown = lines.slice(0, linesEach);
  if (lines.length > linesEach) shown.push(`... (${lines.length - linesEach} more lines above, in the test's output)`);
  const name = [attribute(testcase, "classname"), attribute(testcase, "name")].filter(Boolean).join(" > ");
  console.error(`\n(fail) ${attribute(testcase, "file")}:${attribute(testcase, "line")} ${name}`);
  console.error(shown.map((line) => `  ${line}`).join("\n"));
}
