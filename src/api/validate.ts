// Reading untrusted JSON bodies: each accessor checks one field's type and range and throws a
// ValidationError naming the field (the server turns it into a 400). No schema library: the
// checks are few and the messages say exactly what was wrong.

export class ValidationError extends Error {
  override name = "ValidationError";
  constructor(
    message: string,
    /** The offending field, dotted (e.g. "messages.0.content"). */
    readonly param: string | null = null,
    readonly code: string | null = null,
  ) {
    super(message);
  }
}

/**
 * How deeply a request body may nest (as serde_json's default). JSON.parse reads any depth, but
 * what walks the body recursively afterwards (the schema compiler, the chat template,
 * JSON.stringify) overflows the stack on the deepest, which would be a 500 or a crash.
 */
const MAX_JSON_DEPTH = 128;

/** A request body as JSON (any value: the parsers check its shape). */
export async function readJson(req: { text(): Promise<string> }): Promise<unknown> {
  const text = await req.text();
  if (!text.trim()) throw new ValidationError("the request body is empty (expected JSON)");
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch (error) {
    throw new ValidationError(`the request body is not valid JSON: ${(error as Error).message}`);
  }
  if (nestingDepth(body) > MAX_JSON_DEPTH)
    throw new ValidationError(`the request body nests arrays and objects deeper than ${MAX_JSON_DEPTH} levels`);
  return body;
}

/** How many arrays and objects deep a parsed JSON value goes, found without recursion. */
function nestingDepth(value: unknown): number {
  let deepest = 0;
  const pending: [unknown, number][] = [[value, 0]];
  while (pending.length > 0) {
    const [v, depth] = pending.pop()!;
    if (v === null || typeof v !== "object") continue;
    deepest = Math.max(deepest, depth + 1);
    if (deepest > MAX_JSON_DEPTH) return deepest;
    // Only what nests further is queued: a list of a million ids (a /detokenize) took a second.
    for (const child of Array.isArray(v) ? v : Object.values(v))
      if (child !== null && typeof child === "object") pending.push([child, depth + 1]);
  }
  return deepest;
}

/**
 * A request feature we understand but do not implement: a 400 that says so, and where when
 * `what` does not (Anthropic's and Ollama's error shapes carry no param, and an image deep in a
 * long conversation must be found).
 */
export function unsupported(param: string, what = `'${param}'`): ValidationError {
  const where = what.includes(`'${param}'`) ? "" : ` (at '${param}')`;
  return new ValidationError(`${what} is not supported by this server${where}`, param, "unsupported_parameter");
}

/**
 * service_tier: the API's names (`served`) for the one tier a local server has are taken
 * (OpenAI's "auto" and "default", Anthropic's "auto" and "standard_only"); another is a 400.
 */
export function serviceTier(f: Fields, served: readonly string[]): void {
  const tier = f.string("service_tier");
  if (tier !== undefined && !served.includes(tier)) throw unsupported("service_tier", `'service_tier' '${tier}'`);
}

type Json = Record<string, unknown>;

/** What a JSON value is, as an error names it: "null", "an array", "an object", "a number"... */
const describe = (v: unknown) =>
  v === null ? "null" : Array.isArray(v) ? "an array" : typeof v === "object" ? "an object" : `a ${typeof v}`;

interface NumberRule {
  min?: number;
  max?: number;
  /** Lower bound excluded. */
  above?: number;
  /** Upper bound excluded. */
  below?: number;
  integer?: boolean;
}

export class Fields {
  constructor(
    readonly body: Json,
    readonly prefix = "",
  ) {}

  static of(body: unknown, what = "the request body"): Fields {
    if (body === null || typeof body !== "object" || Array.isArray(body))
      throw new ValidationError(`${what} must be a JSON object, got ${describe(body)}`);
    return new Fields(body as Json);
  }

  /** An item of a list in the request (`at` is its dotted path, e.g. "tools.0"), checked to be an object. */
  static item(value: unknown, at: string): Fields {
    if (value === null || typeof value !== "object" || Array.isArray(value))
      throw new ValidationError(`'${at}' must be an object, got ${describe(value)}`, at);
    return new Fields(value as Json, at);
  }

  name(field: string): string {
    return this.prefix ? `${this.prefix}.${field}` : field;
  }

  /**
   * Refuses fields outside `known`: a feature this server does not implement is a 400 naming
   * it, never silently ignored (null counts as absent).
   */
  onlyKnown(known: Iterable<string>): void {
    const allowed = new Set(known);
    for (const key of Object.keys(this.body)) if (!allowed.has(key) && this.has(key)) throw unsupported(this.name(key));
  }

  has(field: string): boolean {
    return this.body[field] !== undefined && this.body[field] !== null;
  }

  raw(field: string): unknown {
    return this.body[field];
  }

  fail(field: string, message: string): never {
    throw new ValidationError(`'${this.name(field)}' ${message}`, this.name(field));
  }

  string(field: string, o: { required?: boolean; nonEmpty?: boolean } = {}): string | undefined {
    const v = this.body[field];
    if (v === undefined || v === null) {
      if (o.required) this.fail(field, "is required");
      return undefined;
    }
    if (typeof v !== "string") this.fail(field, `must be a string, got ${describe(v)}`);
    if (o.nonEmpty && v.length === 0) this.fail(field, "must not be empty");
    return v;
  }

  boolean(field: string): boolean | undefined {
    const v = this.body[field];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== "boolean") this.fail(field, `must be true or false, got ${describe(v)}`);
    return v;
  }

  number(field: string, rule: NumberRule = {}): number | undefined {
    const v = this.body[field];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== "number") this.fail(field, `must be a number, got ${describe(v)}`);
    // JSON.parse reads a number past float64's range (1e400) as Infinity.
    if (!Number.isFinite(v)) this.fail(field, `must be a finite number, got ${v}`);
    if (rule.integer && !Number.isInteger(v)) this.fail(field, `must be a whole number, got ${v}`);
    if (rule.min !== undefined && v < rule.min) this.fail(field, `must be >= ${rule.min}, got ${v}`);
    if (rule.max !== undefined && v > rule.max) this.fail(field, `must be <= ${rule.max}, got ${v}`);
    if (rule.above !== undefined && v <= rule.above) this.fail(field, `must be > ${rule.above}, got ${v}`);
    if (rule.below !== undefined && v >= rule.below) this.fail(field, `must be < ${rule.below}, got ${v}`);
    return v;
  }

  integer(field: string, rule: Omit<NumberRule, "integer"> = {}): number | undefined {
    return this.number(field, { ...rule, integer: true });
  }

  object(field: string): Fields | undefined {
    const v = this.body[field];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== "object" || Array.isArray(v)) this.fail(field, `must be an object, got ${describe(v)}`);
    return new Fields(v as Json, this.name(field));
  }

  /** A list; `expected` says what the field takes where the caller has read the other forms it takes (a string). */
  array(
    field: string,
    o: { required?: boolean; nonEmpty?: boolean; max?: number; expected?: string } = {},
  ): unknown[] | undefined {
    const v = this.body[field];
    if (v === undefined || v === null) {
      if (o.required) this.fail(field, "is required");
      return undefined;
    }
    if (!Array.isArray(v)) this.fail(field, `must be ${o.expected ?? "an array"}, got ${describe(v)}`);
    if (o.nonEmpty && v.length === 0) this.fail(field, "must not be empty");
    if (o.max !== undefined && v.length > o.max) this.fail(field, `may hold at most ${o.max} items, got ${v.length}`);
    return v;
  }

  /** OpenAI's `stop`: a string or a list of strings. */
  stop(field: string, max = 16): string[] {
    const v = this.body[field];
    if (v === undefined || v === null) return [];
    if (typeof v === "string") return v ? [v] : [];
    if (!Array.isArray(v)) this.fail(field, `must be a string or a list of strings, got ${describe(v)}`);
    if (v.length > max) this.fail(field, `may hold at most ${max} strings, got ${v.length}`);
    v.forEach((s, i) => {
      if (typeof s !== "string")
        throw new ValidationError(
          `'${this.name(field)}.${i}' must be a string, got ${describe(s)}`,
          `${this.name(field)}.${i}`,
        );
    });
    return (v as string[]).filter((s) => s.length > 0);
  }
}

/** One chat message's fields, checked to be an object with a known role (messages.<i>). */
export function messageFields(item: unknown, i: number, roles: Set<string>): { m: Fields; at: string; role: string } {
  const at = `messages.${i}`;
  const m = Fields.item(item, at);
  const role = m.string("role", { required: true })!;
  if (!roles.has(role)) m.fail("role", `must be one of ${[...roles].join(", ")}; got '${role}'`);
  return { m, at, role };
}
