// `mlx list`: the stored models, from the store's index, and the models made from them (aliases
// whose weights are here: mlx create's), as /api/tags lists them.
import { defineCommand } from "citty";
import { durationInWords, formatBytes, plainTable, shellWord } from "../format";
import { listedAliases } from "../store/resolve";
import { blobsPresent, listModels, unreadableModels } from "../store/store";
import { fail } from "./log";

export default defineCommand({
  meta: { name: "list", description: "List the models in the store" },
  args: {
    json: {
      type: "boolean",
      description:
        "One JSON array: name, format, architecture, quantization, size, times, source, revision (a hub commit), missingFiles (blobs gone from disk); a model made from another: its parentModel",
    },
  },
  async run({ args }) {
    try {
      // A model whose manifest cannot be read is listed all the same: its files take space until `mlx rm`.
      const unreadable = await unreadableModels();
      const stored = await listModels();
      const models = await Promise.all(
        stored
          .filter((m) => !unreadable.includes(m.name))
          .map(async (m) => ({ ...m, missingFiles: !(await blobsPresent(m)) })),
      );
      // As /api/tags lists them: the files' format, quantization and size, its source as the parent model.
      const made = listedAliases(stored).map(({ alias, path, base }) => ({
        name: alias.name,
        format: base?.format ?? (path.endsWith(".gguf") ? "gguf" : "mlx"),
        architecture: base?.architecture,
        quantization: base?.quantization,
        totalBytes: base?.totalBytes,
        parentModel: alias.source,
        definedAt: alias.definedAt,
      }));
      if (args.json) {
        const rows = models.map(({ blobs: _, ...summary }) => summary);
        const damaged = unreadable.map((name) => ({ name, unreadableManifest: true }));
        process.stdout.write(`${JSON.stringify([...rows, ...made, ...damaged], null, 2)}\n`);
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
      const madeRows = made.map((m) => [
        m.name,
        m.format,
        m.quantization ?? "-",
        m.totalBytes === undefined ? "-" : formatBytes(m.totalBytes),
        "-",
      ]);
      const damaged = unreadable.map((name) => [name, "-", "-", `unreadable manifest: mlx rm ${shellWord(name)}`, "-"]);
      const header = ["NAME", "FORMAT", "QUANTIZATION", "SIZE", "LAST USED"];
      // The hub commit each pulled one is at, in a column of its own once there is one (what `mlx pull` updates).
      const revisions = models.some((m) => m.revision);
      const withRevisions = (table: string[][], revision: (i: number) => string | undefined) =>
        revisions ? table.map((r, i) => [...r, revision(i)?.slice(0, 7) ?? "-"]) : table;
      const pulledRows = withRevisions(rows, (i) => models[i]!.revision);
      const otherRows = (table: string[][]) => withRevisions(table, () => undefined);
      const columns = revisions ? [...header, "REVISION"] : header;
      // The model each is made from, in a column of its own once there is one (its files are that model's).
      const table =
        made.length === 0
          ? plainTable(columns, [...pulledRows, ...otherRows(damaged)])
          : plainTable(
              [...columns, "FROM"],
              [
                ...pulledRows.map((r) => [...r, "-"]),
                ...otherRows(madeRows).map((r, i) => [...r, made[i]!.parentModel]),
                ...otherRows(damaged).map((r) => [...r, "-"]),
              ],
            );
      process.stdout.write(table);
    } catch (error) {
      fail(error);
    }
  },
});

function timeAgo(iso: string): string {
  const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  return seconds < 60 ? "just now" : `${durationInWords(seconds)} ago`;
}
