// JSON whose integers past 2^53 keep their digits. Tool calls carry ids and amounts that large
// (vLLM, in Python, keeps them exact); a JavaScript number would round 12345678901234567890 to
// 12345678901234567000. Where the runtime has JSON.rawJSON (Bun; Node from 21), such an integer
// is held as its source text, which JSON.stringify writes back as it came; elsewhere it rounds.

type RawJson = { readonly rawJSON: string };

const json = JSON as unknown as {
  rawJSON?: (text: string) => RawJson;
  isRawJSON?: (value: unknown) => value is RawJson;
};

/** An integer's JSON text as a value: a number where a double holds it exactly, else its digits (where the runtime can). */
export function exactInteger(digits: string): number | RawJson {
  const value = Number(digits);
  return Number.isSafeInteger(value) || !json.rawJSON ? value : json.rawJSON(digits.replace(/^(-?)0+(?=\d)/, "$1"));
}

/** JSON.parse, integers past 2^53 kept exact (exactInteger). */
export function parseExactJson(text: string): unknown {
  return JSON.parse(text, (_key, value, context?: { source?: string }) =>
    typeof value === "number" && !Number.isSafeInteger(value) && context?.source && /^-?\d+$/.test(context.source)
      ? exactInteger(context.source)
      : value,
  );
}

/** Whether a value is an integer parseExactJson kept as its digits. */
export function isExactInteger(value: unknown): value is RawJson {
  return json.isRawJSON?.(value) ?? false;
}

/** Whether a parsed JSON value is an object: not null, an array or an exact integer. */
export function isJsonObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value) && !isExactInteger(value);
}
