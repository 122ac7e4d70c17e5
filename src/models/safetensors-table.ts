// A safetensors file's table (an 8-byte length, then JSON naming each tensor's byte range), read
// without its tensors: whether the file is one at all, and whether it holds every byte its table
// names (a copy or download cut short). The store refuses such a file; a server asks before it
// makes room for a model.
import { closeSync, fstatSync, openSync, readSync } from "node:fs";

/** What is wrong with a safetensors file, if anything: no table that reads, or a tensor past its end. */
export type SafetensorsFault = { kind: "not-a-table" | "truncated"; message: string };

export function safetensorsFault(path: string): SafetensorsFault | undefined {
  const fd = openSync(path, "r");
  try {
    const size = fstatSync(fd).size;
    const notATable = (message: string): SafetensorsFault => ({ kind: "not-a-table", message });
    const length = Buffer.alloc(8);
    if (readSync(fd, length, 0, 8, 0) !== 8) return notATable(`not a safetensors file: ${size} bytes`);
    const tableBytes = Number(length.readBigUInt64LE(0));
    // The format bounds a table at 100 MB: a larger length is no table, and not read into memory.
    if (tableBytes > Math.min(size - 8, 100_000_000))
      return notATable(`not a safetensors file: a table of ${tableBytes} bytes in a file of ${size}`);
    const table = Buffer.alloc(tableBytes);
    readSync(fd, table, 0, tableBytes, 8);
    let tensors: Record<string, { data_offsets?: unknown }>;
    try {
      tensors = JSON.parse(table.toString("utf8"));
    } catch {
      return notATable("not a safetensors file: its table is not JSON");
    }
    for (const [name, t] of Object.entries(tensors)) {
      if (name === "__metadata__") continue;
      const end = Array.isArray(t?.data_offsets) ? Number(t.data_offsets[1]) : Number.NaN;
      if (!(8 + tableBytes + end <= size))
        return {
          kind: "truncated",
          message: `tensor '${name}' ends at byte ${8 + tableBytes + end}, file has ${size}`,
        };
    }
    return undefined;
  } finally {
    closeSync(fd);
  }
}
