// `mlx list`: the stored models, from the store's index.
import { defineCommand } from "citty";
import { durationInWords, formatBytes, plainTable, shellWord } from "../format";
import { blobsPresent, listModels, unreadableModels } from "../store/store";
import { fail } from "./log";

export default defineCommand({
  meta: { name: "list", description: "List the models in the store" },
  args: {
    json: {
      type: "boolean",
      description:
        "One JSON array: name, format, architecture, quantization, size, times, source, missingFiles (blobs gone from disk)",
    },
  },
  async run({ args }) {
    try {
      // A model whose manifest cannot be read is listed all the same: its files take space until `mlx rm`.
      const unreadable = await unreadableModels();
      const models = await Promise.all(
        (await listModels())
          .filter((m) => !unreadable.includes(m.name))
          .map(async (m) => ({ ...m, missingFiles: !(await blobsPresent(m)) })),
      );
      if (args.json) {
        const rows = models.map(({ blobs: _, ...summary }) => summary);
        const damaged = unreadable.map((name) => ({ name, unreadableManifest: true }));
        process.stdout.write(`${JSON.stringify([...rows, ...damaged], null, 2)}\n`);
        return;
      }
      const rows = models.map((m) => [
        m.name,
        m.format,
        m.quantization ?? "-",
        // Its size would claim files that are gone.
        m.missingFiles ? "missing files: run mlx verify" : formatBytes(m.totalBytes),
        timeAgo(m.lastUsedAt),
      ]);
      const damaged = unreadable.map((name) => [name, "-", "-", `unreadable manifest: mlx rm ${shellWord(name)}`, "-"]);
      process.stdout.write(plainTable(["NAME", "FORMAT", "QUANTIZATION", "SIZE", "LAST USED"], [...rows, ...damaged]));
    } catch (error) {
      fail(error);
    }
  },
});

function timeAgo(iso: string): string {
  const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  return seconds < 60 ? "just now" : `${durationInWords(seconds)} ago`;
}
