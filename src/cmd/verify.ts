// `mlx verify`: re-hash the store's blobs, remove corrupt ones, say how to get damaged models back.
import { defineCommand } from "citty";
import { formatBytes } from "../format";
import { repair } from "../store/store";
import { verifyStore } from "../store/verify";
import { fail, log, setVerbose } from "./log";

export default defineCommand({
  meta: {
    name: "verify",
    description: "Re-hash every stored file; remove corrupt ones and say which models to pull again",
  },
  args: {
    verbose: { type: "boolean", alias: "v", description: "Name each file as it is checked" },
  },
  async run({ args }) {
    setVerbose(Boolean(args.verbose));
    try {
      const report = await verifyStore((sha, i, count) =>
        log.debug(`checking ${i + 1}/${count} sha256-${sha.slice(0, 12)}`),
      );
      const kept = "kept: the store is read-only";
      for (const sha of report.corrupt)
        process.stderr.write(`corrupt: sha256-${sha} (${report.readOnly ? kept : "removed"})\n`);
      for (const sha of report.missing) process.stderr.write(`missing: sha256-${sha}\n`);
      process.stdout.write(`checked ${files(report.checkedBlobs)} (${formatBytes(report.checkedBytes)})\n`);
      const { leftovers } = report;
      if ("runningPulls" in leftovers)
        process.stdout.write(
          `kept the files of unfinished pulls: process ${leftovers.runningPulls.join(", ")} is pulling or converting\n`,
        );
      else if (leftovers.files > 0)
        process.stdout.write(
          `removed ${files(leftovers.files)} that interrupted or failed pulls left (${formatBytes(leftovers.bytes)})\n`,
        );
      if (report.damagedModels.length === 0) {
        process.stdout.write("all stored models are intact\n");
        return;
      }
      for (const { need, command } of report.damagedModels.map(repair))
        process.stdout.write(`needs ${need}: ${command}\n`);
      process.exit(1);
    } catch (error) {
      fail(error);
    }
  },
});

const files = (count: number) => `${count} file${count === 1 ? "" : "s"}`;
