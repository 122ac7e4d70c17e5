// Python's str methods and % formatting as chat templates use them (python-jinja.ts calls them
// where @huggingface/jinja's part from Python's or are missing): whitespace as str.isspace counts
// it, split with maxsplit, find, count, format, the padding methods, and the is* tests.
import { pythonRepr, pythonStr, type Rendered, type TemplateValue } from "./python-values";

type StripSide = "strip" | "lstrip" | "rstrip";

/** Python's whitespace (str.isspace): JavaScript's \s but U+FEFF, and U+001C-U+001F and U+0085 too. */
const SPACE = "\\t\\n\\v\\f\\r\\x1c-\\x1f \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";
const LEADING_SPACE = new RegExp(`^[${SPACE}]+`);
const TRAILING_SPACE = new RegExp(`[${SPACE}]+$`);
const ALL_SPACE = new RegExp(`^[${SPACE}]+$`);
const FIRST_WORD = new RegExp(`^[^${SPACE}]+`);
const LAST_WORD = new RegExp(`[^${SPACE}]+$`);

/** Python's str.strip, lstrip and rstrip: without characters (or None), whitespace. */
export function pythonStrip(side: StripSide, value: unknown, chars: unknown): string {
  if (typeof value !== "string") throw new Error(`${side}() is a method of strings`);
  if (chars === undefined || chars === null) {
    const start = side === "rstrip" ? value : value.replace(LEADING_SPACE, "");
    return side === "lstrip" ? start : start.replace(TRAILING_SPACE, "");
  }
  if (typeof chars !== "string") throw new Error(`${side}() takes a string of the characters to strip`);
  const strip = new Set(chars);
  const points = [...value];
  let [start, end] = [0, points.length];
  if (side !== "rstrip") while (start < end && strip.has(points[start]!)) start++;
  if (side !== "lstrip") while (end > start && strip.has(points[end - 1]!)) end--;
  return points.slice(start, end).join("");
}

/**
 * Python's str.split (rsplit from the right): at each separator, or without one at runs of
 * whitespace, at most maxsplit times, the part left over keeping its own (the library's split
 * took no keywords, and split at JavaScript's whitespace).
 */
function pythonSplit(text: string, separator: string | null, maxsplit: number, fromRight: boolean): string[] {
  if (separator === "") throw new Error("empty separator");
  if (separator !== null) {
    const parts = text.split(separator);
    if (maxsplit < 0 || parts.length <= maxsplit + 1) return parts;
    return fromRight
      ? [parts.slice(0, parts.length - maxsplit).join(separator), ...parts.slice(parts.length - maxsplit)]
      : [...parts.slice(0, maxsplit), parts.slice(maxsplit).join(separator)];
  }
  const words: string[] = [];
  const trim = (rest: string) => rest.replace(fromRight ? TRAILING_SPACE : LEADING_SPACE, "");
  for (let rest = trim(text); rest !== ""; ) {
    if (words.length === maxsplit) {
      words.push(rest);
      break;
    }
    const word = (fromRight ? LAST_WORD : FIRST_WORD).exec(rest)![0];
    words.push(word);
    rest = trim(fromRight ? rest.slice(0, -word.length) : rest.slice(word.length));
  }
  return fromRight ? words.reverse() : words;
}

/** Python's str.startswith and endswith: of a string or any of a tuple's, within [start:end] if given. */
function pythonAffix(self: string, { args, kwargs }: MethodArgs, atEnd: boolean): boolean {
  const affixes = args[0]?.type === "StringValue" ? [args[0]] : ((args[0]?.value ?? []) as TemplateValue[]);
  const points = [...self];
  const [start, end] = [args[1] ?? kwargs.get("start"), args[2] ?? kwargs.get("end")];
  const text =
    start === undefined && end === undefined
      ? self
      : points
          .slice(integer(start, 0), end === undefined || end.type === "NullValue" ? undefined : Number(end.value))
          .join("");
  return affixes.some((affix) => {
    const value = stringArgument(affix, `${atEnd ? "endswith" : "startswith"}()'s argument`);
    return atEnd ? text.endsWith(value) : text.startsWith(value);
  });
}

/** Python's str.center, ljust and rjust: pads with fill to width, code points counted. */
export function pythonPad(text: string, width: number, fill: string, side: "left" | "right" | "center"): string {
  const room = Math.max(0, width - [...text].length);
  const left = side === "right" ? room : side === "center" ? Math.floor(room / 2) + (room & width & 1) : 0;
  return fill.repeat(left) + text + fill.repeat(room - left);
}

/** Python's str.find and str.index (rfind, rindex from the right), in code points. */
function pythonFind(text: string, sub: string, fromRight: boolean): number {
  const at = fromRight ? text.lastIndexOf(sub) : text.indexOf(sub);
  return at < 0 ? -1 : [...text.slice(0, at)].length;
}

/** Python's str.count: non-overlapping occurrences ("" counts the gaps between code points). */
function pythonCount(text: string, sub: string): number {
  return sub === "" ? [...text].length + 1 : text.split(sub).length - 1;
}

/** Python's str.format with {}, {0} and {name} fields (no format specs: those are refused). */
function pythonFormat(format: string, args: TemplateValue[], kwargs: Map<string, TemplateValue>): string {
  let next = 0;
  return format.replace(/\{\{|\}\}|\{([^{}]*)\}/g, (field, name: string | undefined) => {
    if (name === undefined) return field[0]!;
    if (/[:!]/.test(name)) throw new Error(`str.format() with a conversion or format spec is not supported: ${field}`);
    const value = name === "" ? args[next++] : /^\d+$/.test(name) ? args[Number(name)] : kwargs.get(name);
    if (value === undefined) throw new Error(`str.format(): no argument for ${field}`);
    return pythonStr(value);
  });
}

/** Python's fixed-point digits of a float: a tie rounds to the even digit (JavaScript's toFixed rounds it up: 0.5 → "1"). */
export function pythonFixed(x: number, digits: number): string {
  const exactDigits = Math.min(100, digits + 25);
  const exact = x.toFixed(exactDigits); // the double's exact decimal digits this far
  const [kept, rest] = [
    exact.slice(0, exact.length - (exactDigits - digits)),
    exact.slice(exact.length - (exactDigits - digits)),
  ];
  if (/^50*$/.test(rest) && /[02468]\.?$/.test(kept)) return kept.replace(/\.$/, "");
  return x.toFixed(digits);
}

/** Python's printf-style `format % values`: %s %r %d %i %f %x %o %c %% with flags, width, precision, and %(name)s. */
export function pythonPercentFormat(format: string, values: TemplateValue): string {
  const positional = values.type === "TupleValue" ? (values.value as TemplateValue[]) : [values];
  const named = values.type === "ObjectValue" ? (values.value as Map<string, TemplateValue>) : undefined;
  let next = 0;
  const text = format.replace(
    /%(?:\(([^)]*)\))?([-+ 0#]*)(\d+)?(?:\.(\d+))?(.)/gs,
    (
      _,
      name: string | undefined,
      flags: string,
      width: string | undefined,
      precision: string | undefined,
      kind: string,
    ) => {
      if (kind === "%") return "%";
      const value = name !== undefined ? named?.get(name) : positional[next++];
      if (value === undefined) throw new Error("not enough arguments for format string");
      const number = () => {
        if (!["IntegerValue", "FloatValue", "BooleanValue"].includes(value.type))
          throw new Error(`%${kind} format: a real number is required, not ${value.type}`);
        return Number(value.value);
      };
      let out: string;
      if (kind === "s") out = pythonStr(value);
      else if (kind === "r" || kind === "a") out = pythonRepr(value);
      else if (kind === "d" || kind === "i" || kind === "u") out = Math.trunc(number()).toString();
      else if (kind === "f" || kind === "F")
        out = pythonFixed(number(), precision === undefined ? 6 : Number(precision));
      else if (kind === "x" || kind === "X" || kind === "o") {
        const digits = Math.trunc(number()).toString(kind === "o" ? 8 : 16);
        out = kind === "X" ? digits.toUpperCase() : digits;
      } else if (kind === "c")
        out = typeof value.value === "number" ? String.fromCodePoint(value.value) : pythonStr(value);
      else throw new Error(`unsupported format character '${kind}'`);
      if (precision !== undefined && (kind === "s" || kind === "r"))
        out = [...out].slice(0, Number(precision)).join("");
      if (flags.includes("+") && /^[dfFi]$/.test(kind) && !out.startsWith("-")) out = `+${out}`;
      const pad = Math.max(0, Number(width ?? 0) - [...out].length);
      if (flags.includes("-")) return out + " ".repeat(pad);
      if (flags.includes("0") && kind !== "s" && kind !== "r") {
        const sign = /^[-+]/.test(out) ? out[0]! : "";
        return sign + "0".repeat(pad) + out.slice(sign.length);
      }
      return " ".repeat(pad) + out;
    },
  );
  if (named === undefined && next < positional.length && values.type === "TupleValue")
    throw new Error("not all arguments converted during string formatting");
  return text;
}

export type MethodArgs = { args: Rendered[]; kwargs: Map<string, Rendered> };
/** A method's argument that must be a string. */
export const stringArgument = (value: TemplateValue | undefined, what: string): string => {
  if (value?.type !== "StringValue") throw new Error(`${what} must be a string`);
  return value.value as string;
};
/** A method's integer argument, or its default when not given (or None). */
export const integer = (value: TemplateValue | undefined, fallback: number): number =>
  value === undefined || value.type === "NullValue" ? fallback : Number(value.value);
/** split's and rsplit's sep and maxsplit, by position or keyword. */
const splitArgs = ({ args, kwargs }: MethodArgs): [string | null, number] => {
  const separator = args[0] ?? kwargs.get("sep");
  return [
    separator === undefined || separator.type === "NullValue" ? null : stringArgument(separator, "sep"),
    integer(args[1] ?? kwargs.get("maxsplit"), -1),
  ];
};

/**
 * Python's str methods that the library lacks, or has otherwise than Python (capitalize and
 * title leave the other letters' case): by name, given the string and the call's arguments.
 */
export const STRING_METHODS: Record<string, (self: string, call: MethodArgs) => unknown> = {
  count: (self, { args }) => pythonCount(self, stringArgument(args[0], "count()'s argument")),
  find: (self, { args }) => pythonFind(self, stringArgument(args[0], "find()'s argument"), false),
  rfind: (self, { args }) => pythonFind(self, stringArgument(args[0], "rfind()'s argument"), true),
  index: (self, { args }) => {
    const at = pythonFind(self, stringArgument(args[0], "index()'s argument"), false);
    if (at < 0) throw new Error("substring not found");
    return at;
  },
  rindex: (self, { args }) => {
    const at = pythonFind(self, stringArgument(args[0], "rindex()'s argument"), true);
    if (at < 0) throw new Error("substring not found");
    return at;
  },
  split: (self, call) => pythonSplit(self, ...splitArgs(call), false),
  rsplit: (self, call) => pythonSplit(self, ...splitArgs(call), true),
  startswith: (self, call) => pythonAffix(self, call, false),
  endswith: (self, call) => pythonAffix(self, call, true),
  splitlines: (self) => {
    const lines = self.split(/\r\n|[\n\r\v\f\x1c-\x1e\x85\u2028\u2029]/);
    if (lines.at(-1) === "") lines.pop(); // no line after the last break, nor in ""
    return lines;
  },
  partition: (self, { args }) => {
    const separator = stringArgument(args[0], "partition()'s separator");
    const at = self.indexOf(separator);
    return at < 0 ? [self, "", ""] : [self.slice(0, at), separator, self.slice(at + separator.length)];
  },
  rpartition: (self, { args }) => {
    const separator = stringArgument(args[0], "rpartition()'s separator");
    const at = self.lastIndexOf(separator);
    return at < 0 ? ["", "", self] : [self.slice(0, at), separator, self.slice(at + separator.length)];
  },
  capitalize: (self) => {
    const [first = "", ...rest] = [...self];
    return first.toUpperCase() + rest.join("").toLowerCase();
  },
  title: (self) => self.replace(/\p{L}+/gu, (word) => word[0]!.toUpperCase() + word.slice(1).toLowerCase()),
  swapcase: (self) => [...self].map((c) => (c === c.toUpperCase() ? c.toLowerCase() : c.toUpperCase())).join(""),
  casefold: (self) => self.toLowerCase(),
  format: (self, { args, kwargs }) => pythonFormat(self, args, kwargs),
  join: (self, { args }) => {
    const items = args[0];
    if (items?.type === "StringValue") return [...(items.value as string)].join(self);
    if (items?.type !== "ArrayValue" && items?.type !== "TupleValue") throw new Error("join() takes a list of strings");
    return (items.value as TemplateValue[]).map((item) => stringArgument(item, "join()'s items")).join(self);
  },
  zfill: (self, { args }) => {
    const sign = /^[-+]/.test(self) ? self[0]! : "";
    return sign + self.slice(sign.length).padStart(integer(args[0], 0) - sign.length, "0");
  },
  ljust: (self, { args }) =>
    pythonPad(self, integer(args[0], 0), args[1] ? stringArgument(args[1], "fill") : " ", "left"),
  rjust: (self, { args }) =>
    pythonPad(self, integer(args[0], 0), args[1] ? stringArgument(args[1], "fill") : " ", "right"),
  center: (self, { args }) =>
    pythonPad(self, integer(args[0], 0), args[1] ? stringArgument(args[1], "fill") : " ", "center"),
  removeprefix: (self, { args }) => {
    const prefix = stringArgument(args[0], "removeprefix()'s argument");
    return self.startsWith(prefix) ? self.slice(prefix.length) : self;
  },
  removesuffix: (self, { args }) => {
    const suffix = stringArgument(args[0], "removesuffix()'s argument");
    return suffix && self.endsWith(suffix) ? self.slice(0, -suffix.length) : self;
  },
  isdigit: (self) => /^\p{Nd}+$/u.test(self),
  isnumeric: (self) => /^\p{N}+$/u.test(self),
  isdecimal: (self) => /^\p{Nd}+$/u.test(self),
  isalpha: (self) => /^\p{L}+$/u.test(self),
  isalnum: (self) => /^[\p{L}\p{N}]+$/u.test(self),
  isspace: (self) => ALL_SPACE.test(self),
  isupper: (self) => /\p{Lu}/u.test(self) && !/\p{Ll}/u.test(self),
  islower: (self) => /\p{Ll}/u.test(self) && !/\p{Lu}/u.test(self),
};
