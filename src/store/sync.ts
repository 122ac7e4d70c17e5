// Flushing a written file to disk before it is renamed into place, so a crash right after the
// rename cannot leave a complete-looking name over missing data.
import { open } from "node:fs/promises";

export async function syncToDisk(path: string): Promise<void> {
  const handle = await open(path, "a");
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
