// Streaming detokenization: the chunks must add up to the full decode, and never show a broken
// character on the way.
import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { gunzipSync } from "node:zlib";
import {
  ByteLevelDetokenizer,
  IncrementalDetokenizer,
  createDetokenizer,
  type StreamingDetokenizer,
} from "../src/tokenizer/detokenizer";
import { Tokenizer } from "../src/tokenizer/tokenizer";

const FIXTURES = join(import.meta.dir, "fixtures");
const fixture: { cases: { text: string; ids: number[] }[] } = JSON.parse(
  readFileSync(join(FIXTURES, "tokenizer-smollm2-ids.json"), "utf8"),
);
const meta = JSON.parse(
  gunzipSync(readFileSync(join(FIXTURES, "tokenizer-smollm2-gguf-meta.json.gz"))).toString("utf8"),
);
const tok = Tokenizer.fromGGUFMetadata(meta);

function stream(detok: StreamingDetokenizer, ids: number[]): string[] {
  const chunks = ids.map((id) => detok.push(id));
  chunks.push(detok.flush());
  return chunks;
}

const label = (text: string) => JSON.stringify(text.length > 40 ? `${text.slice(0, 40)}…` : text);

describe("byte-level streaming", () => {
  test("createDetokenizer picks the byte-level path for a byte-level tokenizer", () => {
    expect(createDetokenizer(tok)).toBeInstanceOf(ByteLevelDetokenizer);
  });

  for (const { text, ids } of fixture.cases) {
    test(`${label(text)}`, () => {
      for (const skipSpecialTokens of [false, true]) {
        const chunks = stream(createDetokenizer(tok, { skipSpecialTokens }), ids);
        expect(chunks.join("")).toBe(tok.decode(ids, { skipSpecialTokens }));
        for (const chunk of chunks) expect(chunk).not.toContain("\uFFFD");
      }
    });
  }

  test("an emoji split over several tokens comes out whole, once complete", () => {
    const ids = tok.encode("🦊");
    expect(ids.length).toBeGreaterThan(1); // the point of the test
    const detok = createDetokenizer(tok);
    const chunks = ids.map((id) => detok.push(id));
    expect(chunks.slice(0, -1).every((c) => c === "")).toBe(true);
    expect(chunks.at(-1)).toBe("🦊");
    expect(detok.flush()).toBe("");
  });

  test("an unfinished character at the end decodes like a full decode (U+FFFD)", () => {
    const ids = tok.encode("ok 🦊").slice(0, -1);
    const chunks = stream(createDetokenizer(tok), ids);
    expect(chunks.join("")).toBe(tok.decode(ids));
    expect(chunks.at(-1)).toContain("\uFFFD");
  });

  test("constant work per token: no full re-decode", () => {
    const ids = fixture.cases.flatMap((c) => c.ids);
    const original = tok.decode.bind(tok);
    let decodeCalls = 0;
    tok.decode = (...args) => (decodeCalls++, original(...args));
    try {
      const chunks = stream(createDetokenizer(tok), ids);
      expect(decodeCalls).toBe(0);
      tok.decode = original;
      expect(chunks.join("")).toBe(tok.decode(ids));
    } finally {
      tok.decode = original;
    }
  });
});

describe("windowed streaming (any decoder)", () => {
  for (const { text, ids } of fixture.cases) {
    test(`${label(text)}`, () => {
      const chunks = stream(new IncrementalDetokenizer(tok), ids);
      expect(chunks.join("")).toBe(tok.decode(ids));
      for (const chunk of chunks) expect(chunk).not.toContain("\uFFFD");
    });
  }

  test("decodes only a short window per token", () => {
    const ids = fixture.cases.at(-1)!.ids; // the long text
    const original = tok.decode.bind(tok);
    let longest = 0;
    tok.decode = (window, options) => ((longest = Math.max(longest, window.length)), original(window, options));
    try {
      stream(new IncrementalDetokenizer(tok), ids);
    } finally {
      tok.decode = original;
    }
    expect(ids.length).toBeGreaterThan(500);
    expect(longest).toBeLessThanOrEqual(8);
  });

  // A SentencePiece-style tokenizer: "▁" for spaces, <0xNN> byte fallback, and a decoder that
  // strips the first leading space, which is what the windowed path exists for.
  const spm = sentencePieceTokenizer();

  test("SentencePiece-style tokenizer: createDetokenizer falls back to the window", () => {
    expect(createDetokenizer(spm)).toBeInstanceOf(IncrementalDetokenizer);
  });

  for (const text of ["Hello world", " Hello  world ", "héllo wörld 🦊 ok", "🦊🦊", "x"]) {
    test(`SentencePiece-style ${label(text)}`, () => {
      const ids = spm.encode(text);
      expect(ids.length).toBeGreaterThan(0);
      const chunks = stream(createDetokenizer(spm), ids);
      expect(chunks.join("")).toBe(spm.decode(ids));
      for (const chunk of chunks) expect(chunk).not.toContain("\uFFFD");
    });
  }
});

/** A small SentencePiece-like BPE: letters, "▁", and byte fallback for everything else. */
function sentencePieceTokenizer(): Tokenizer {
  const pieces = ["<unk>", "<s>", "</s>"];
  for (let b = 0; b < 256; b++) pieces.push(`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`);
  pieces.push("▁", ..."Hdelorwkx", "▁H", "▁w", "He", "ll", "▁He", "▁Hell", "▁Hello", "or", "▁wor", "▁worl", "▁world");
  const vocab = Object.fromEntries(pieces.map((p, i) => [p, i]));
  const merges = [
    ["▁", "H"],
    ["▁", "w"],
    ["l", "l"],
    ["▁H", "e"],
    ["o", "r"],
    ["▁He", "ll"],
    ["▁Hell", "o"],
    ["▁w", "or"],
    ["▁wor", "l"],
    ["▁worl", "d"],
  ];
  const json = {
    version: "1.0",
    added_tokens: [0, 1, 2].map((id) => ({
      id,
      content: pieces[id],
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    })),
    normalizer: {
      type: "Sequence",
      normalizers: [
        { type: "Prepend", prepend: "▁" },
        { type: "Replace", pattern: { String: " " }, content: "▁" },
      ],
    },
    pre_tokenizer: null,
    post_processor: null,
    decoder: {
      type: "Sequence",
      decoders: [
        { type: "Replace", pattern: { String: "▁" }, content: " " },
        { type: "ByteFallback" },
        { type: "Fuse" },
        { type: "Strip", content: " ", start: 1, stop: 0 },
      ],
    },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: "<unk>",
      fuse_unk: true,
      byte_fallback: true,
      ignore_merges: false,
      vocab,
      merges,
    },
  };
  return new Tokenizer(json, { bos_token: "<s>", eos_token: "</s>", add_bos_token: false });
}
