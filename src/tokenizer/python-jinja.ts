// Chat templates are written for Python's Jinja2 (transformers renders them); we render with
// @huggingface/jinja, and where it parts from Python's, the parsed template is rewritten to call
// Python's builtins (withPythonBuiltins, PYTHON_BUILTINS), and rendered by an interpreter that does
// as Jinja2 where the library's does not (PythonInterpreter): parseTemplate, then renderTemplate.
import { Environment, Interpreter, Template } from "@huggingface/jinja";
import { isExactInteger } from "../exact-json";
import {
  integer,
  pythonFixed,
  pythonPad,
  pythonPercentFormat,
  pythonStrip,
  stringArgument,
  STRING_METHODS,
  type MethodArgs,
} from "./python-strings";
import {
  compareCodePoints,
  NUMERIC,
  pythonEqual,
  pythonJson,
  pythonLen,
  pythonRange,
  pythonRepr,
  pythonStr,
  PYTHON_TYPE_NAMES,
  TemplateTypeError,
  type Rendered,
  type TemplateValue,
} from "./python-values";

export { TemplateTypeError };

const DAYS = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];
const MONTHS = [
  ...["January", "February", "March", "April", "May", "June"],
  ...["July", "August", "September", "October", "November", "December"],
];

/**
 * transformers' strftime_now: Python's strftime of the local time, in the C locale (English
 * names), with glibc's and macOS's "-" flag (%-d: no padding). @huggingface/jinja's knows only
 * %Y %m %d %b %B %H %M and names months in the process's locale ("Dez" under Node for LANG=de_DE):
 * Llama 3.2's and gpt-oss's templates date their system prompts with it.
 */
function strftimeNow(format: string): string {
  const now = new Date();
  const dayOfYear =
    Math.round(
      (new Date(now.getFullYear(), now.getMonth(), now.getDate()).getTime() -
        new Date(now.getFullYear(), 0, 1).getTime()) /
        86_400_000,
    ) + 1;
  const fields: Record<string, [value: number | string, width: number, fill?: string]> = {
    a: [DAYS[now.getDay()]!.slice(0, 3), 0],
    A: [DAYS[now.getDay()]!, 0],
    b: [MONTHS[now.getMonth()]!.slice(0, 3), 0],
    B: [MONTHS[now.getMonth()]!, 0],
    d: [now.getDate(), 2],
    e: [now.getDate(), 2, " "],
    H: [now.getHours(), 2],
    I: [now.getHours() % 12 || 12, 2],
    j: [dayOfYear, 3],
    m: [now.getMonth() + 1, 2],
    M: [now.getMinutes(), 2],
    p: [now.getHours() < 12 ? "AM" : "PM", 0],
    S: [now.getSeconds(), 2],
    y: [now.getFullYear() % 100, 2],
    Y: [now.getFullYear(), 0],
    "%": ["%", 0],
  };
  return format.replace(/%(-?)([a-zA-Z%])/g, (directive, unpadded: string, name: string) => {
    const field = fields[name];
    if (!field) return directive; // as the C library leaves one it does not know
    const [value, width, fill = "0"] = field;
    return unpadded ? String(value) : String(value).padStart(width, fill);
  });
}

/**
 * A chat template's raise_exception: the template refuses the messages (roles that do not
 * alternate, a tool call without a name...), which is the request's fault, unlike a feature of
 * Python's Jinja2 the library lacks.
 */
export class TemplateRaisedError extends Error {
  override name = "TemplateRaisedError";
}

/**
 * What a rewritten call (see withPythonBuiltins) calls, by its name in the template's variables,
 * and transformers' globals, by theirs: a template tests `strftime_now is defined` (Llama 3.2's
 * dated its system prompt "26 Jul 2024", its fallback, when only the call was rewritten).
 */
const PYTHON_BUILTINS: Record<string, (...args: unknown[]) => string | number> = {
  ...Object.fromEntries(
    (["strip", "lstrip", "rstrip"] as const).map((side) => [
      `__python_${side}`,
      (value: unknown, chars?: unknown) => pythonStrip(side, value, chars),
    ]),
  ),
  strftime_now: (format: unknown) => strftimeNow(String(format)),
  __python_str: (boxed: unknown) => pythonStr((boxed as TemplateValue[])[0]),
  __python_len: (boxed: unknown) => pythonLen((boxed as TemplateValue[])[0]),
  raise_exception: (message: unknown) => {
    throw new TemplateRaisedError(String(message));
  },
};

/** Filters of a whole value rewritten to call Python's (see withPythonBuiltins). */
const VALUE_FILTERS = new Map([
  ["string", "__python_str"],
  ["length", "__python_len"],
]);

/** The statements of a template's body; anything else there is an expression it prints ({{ x }}). */
const STATEMENTS = new Set([
  "Set",
  "If",
  "For",
  "Macro",
  "CallStatement",
  "Break",
  "Continue",
  "FilterStatement",
  "Comment",
  "PythonBlock",
  "PythonLoopBody",
]);

/**
 * Where @huggingface/jinja's builtins part from Python's, which templates are written for, the
 * parsed template is rewritten to call Python's (PYTHON_BUILTINS; the library lets no variable
 * replace its own): `x.lstrip(c)` (also strip, rstrip) becomes `__python_lstrip(x, c)`, as the
 * library's ignore the characters given and strip whitespace (Qwen3's template keeps an answer
 * with `.lstrip('\n')`, and lost the indentation of one that opens with code), and JavaScript's
 * whitespace at that (a byte order mark, not U+001C); what the template prints (`{{ x }}`),
 * `x | string` and both sides of `x ~ y` become `__python_str([x])`, as the library writes
 * JavaScript's true, null (or nothing) and JSON where Python writes True, None and {'a': 1}, and
 * throws on `none | string` (Qwen3-Coder's template writes a tool's schema values with it);
 * and `x | length` becomes `__python_len([x])`, a string's code points (not UTF-16 units).
 */
function withPythonBuiltins(template: Template): Template {
  type Node = { type?: string; [key: string]: unknown };
  // The library looks for a macro's varargs and kwargs only in nodes of its Statement class: a
  // rewritten node is made one (a plain object hid `{{ varargs }}`, and the call was refused).
  const statement = Object.getPrototypeOf(Object.getPrototypeOf(template.parsed)) as object;
  const node = (fields: Node): Node => Object.assign(Object.create(statement) as Node, fields);
  const call = (name: string, args: unknown[]): Node =>
    node({ type: "CallExpression", callee: node({ type: "Identifier", value: name }), args });
  // Given its value in a list: the library hands a function a value's contents, and 1.0's are 1's.
  const boxedCall = (name: string, value: unknown) => call(name, [node({ type: "ArrayLiteral", value: [value] })]);
  const str = (value: unknown): Node => boxedCall("__python_str", value);
  const printed = (item: Node) => (STATEMENTS.has(item.type!) || item.type === "StringLiteral" ? item : str(item));
  const visit = (value: unknown): void => {
    if (!value || typeof value !== "object") return;
    if (Array.isArray(value)) return value.forEach(visit);
    const n = value as Node;
    for (const child of Object.values(n)) visit(child);
    const callee = n.callee as Node | undefined;
    const method = callee?.property as Node | undefined;
    for (const block of ["body", "alternate", "defaultBlock"])
      if (Array.isArray(n[block])) n[block] = (n[block] as Node[]).map(printed);
    // A loop's body and an if's branches keep what they rendered before a break or continue (see PythonInterpreter).
    if (n.type === "For") n.body = [node({ type: "PythonLoopBody", body: n.body })];
    if (n.type === "If")
      for (const branch of ["body", "alternate"]) n[branch] = [node({ type: "PythonBlock", body: n[branch] })];
    // loop.depth and loop.depth0, which the library's loop lacks, are 1 and 0 but in recursive loops (which it lacks too).
    const member = n.object as Node | undefined;
    const depth = (n.property as Node | undefined)?.value;
    if (
      n.type === "MemberExpression" &&
      !n.computed &&
      member?.type === "Identifier" &&
      member.value === "loop" &&
      (depth === "depth" || depth === "depth0")
    )
      Object.assign(n, {
        type: "IntegerLiteral",
        value: depth === "depth" ? 1 : 0,
        object: undefined,
        property: undefined,
      });
    // loop.cycle(a, b), which the library's loop lacks, is [a, b][loop.index0 % 2].
    const loopObject = callee?.object as Node | undefined;
    if (
      n.type === "CallExpression" &&
      callee?.type === "MemberExpression" &&
      loopObject?.type === "Identifier" &&
      loopObject.value === "loop" &&
      method?.value === "cycle"
    ) {
      const index0 = node({
        type: "MemberExpression",
        object: loopObject,
        property: node({ type: "Identifier", value: "index0" }),
        computed: false,
      });
      const cycle = (n.args as unknown[]).length;
      const position = node({
        type: "BinaryExpression",
        operator: { value: "%" },
        left: index0,
        right: node({ type: "IntegerLiteral", value: cycle }),
      });
      Object.assign(n, {
        type: "MemberExpression",
        object: node({ type: "ArrayLiteral", value: n.args }),
        property: position,
        computed: true,
      });
      delete n.callee;
      delete n.args;
    }
    if (n.type === "BinaryExpression" && (n.operator as Node).value === "~")
      [n.left, n.right] = [str(n.left), str(n.right)];
    const filter = n.filter as Node | undefined;
    const pythonFilter = filter?.type === "Identifier" ? VALUE_FILTERS.get(filter.value as string) : undefined;
    if (n.type === "FilterExpression" && pythonFilter)
      Object.assign(n, boxedCall(pythonFilter, n.operand), {
        operand: undefined,
        filter: undefined,
      });
    if (
      n.type === "CallExpression" &&
      callee?.type === "MemberExpression" &&
      !callee.computed &&
      method?.type === "Identifier" &&
      ["strip", "lstrip", "rstrip"].includes(method.value as string)
    ) {
      n.args = [callee.object, ...(n.args as unknown[])];
      method.value = `__python_${method.value}`;
      n.callee = method;
    }
  };
  visit(template.parsed);
  return template;
}

/** A {% break %} or {% continue %} on its way out of its loop's body, with what the body rendered before it. */
class LoopControl extends Error {
  constructor(
    readonly kind: "Break" | "Continue",
    public rendered = "",
  ) {
    super(`{% ${kind.toLowerCase()} %} outside a loop`); // the message of one no loop caught
  }
}

type Statement = Parameters<Interpreter["evaluate"]>[0];
type BinaryNode = { type: "BinaryExpression"; operator: { value: string }; left: Statement; right: Statement };
type CallNode = {
  type: "CallExpression";
  callee: { type: string; computed?: boolean; object: Statement; property: { value: string } };
  args: ArgumentNode[];
};
type ArgumentNode = { type: string; key?: { value: string }; value: Statement };
type FilterNode = {
  type: "FilterExpression";
  operand: Statement;
  filter: { type: string; value?: string; callee?: { value: string }; args?: ArgumentNode[] };
};
/** The comparisons Jinja2's select, reject, selectattr and rejectattr take as tests, by operator. */
const COMPARISON_TESTS: Record<string, string> = {
  "==": "==",
  eq: "==",
  equalto: "==",
  sameas: "==",
  "!=": "!=",
  ne: "!=",
  ">": ">",
  gt: ">",
  greaterthan: ">",
  ">=": ">=",
  ge: ">=",
  "<": "<",
  lt: "<",
  lessthan: "<",
  "<=": "<=",
  le: "<=",
  in: "in",
};
/** What Jinja2 iterates (a dict by its keys; its undefined as nothing), and what also has a length and items. */
const ITERABLE = new Set([
  "ArrayValue",
  "TupleValue",
  "StringValue",
  "ObjectValue",
  "KeywordArgumentsValue",
  "UndefinedValue",
]);
/**
 * Jinja2's tests that the library lacks (float), or has otherwise: its number test refused True
 * (a Python int), its iterable refused dicts, tuples and undefined values (Gemma 3's pythonic
 * tool template wrote a call's arguments `is iterable and is mapping` as a JSON dict, and Llama
 * 4's JSON one a message's content parts as JSON), and Jinja2's undefined is a sequence and callable.
 */
const PYTHON_TESTS: Record<string, (value: TemplateValue) => boolean> = {
  float: (value) => value.type === "FloatValue",
  number: (value) => NUMERIC.has(value.type),
  iterable: (value) => ITERABLE.has(value.type),
  sequence: (value) => ITERABLE.has(value.type),
  callable: (value) => value.type === "FunctionValue" || value.type === "UndefinedValue",
};
/** Jinja2's filters that the library lacks, or has only for some values or forms (see PythonInterpreter.pythonFilter). */
const PYTHON_FILTERS = new Set([
  "map",
  "select",
  "reject",
  "selectattr",
  "rejectattr",
  "sum",
  "round",
  "first",
  "last",
  "min",
  "max",
  "reverse",
  "list",
  "trim",
  "center",
  "format",
  "wordcount",
  "batch",
  "join",
  "string",
  "length",
  "count",
  "d",
  "capitalize",
  "title",
  "upper",
  "lower",
  "tojson",
  "unique",
  "int",
  "float",
  "escape",
  "e",
  "items",
  "dictsort",
  "safe",
]);
/** An expression as the template writes it (`messages[0].role`), for errors; "a value" where it is no plain path. */
function expressionText(expression: Statement): string {
  const node = expression as unknown as {
    type: string;
    value?: unknown;
    object?: Statement;
    property?: Statement & { value?: unknown; type: string };
    computed?: boolean;
  };
  if (node.type === "Identifier") return String(node.value);
  if (node.type !== "MemberExpression") return "a value";
  const object = expressionText(node.object!);
  if (!node.computed) return `${object}.${String(node.property!.value)}`;
  const literal = ["IntegerLiteral", "StringLiteral"].includes(node.property!.type) ? node.property!.value : undefined;
  return `${object}[${literal === undefined ? "..." : JSON.stringify(literal)}]`;
}

/**
 * The methods Python's str, None, list and tuple have, which Jinja2's sandbox lets a template call:
 * a call of any other on one fails in transformers too (a message's list of content parts given to
 * `content.startswith(...)`, a call's arguments given as text to `arguments.items()`), the
 * request's fault, not a feature the library lacks. List methods that change the list are refused.
 */
const PYTHON_METHODS: Record<string, { methods: Set<string>; unsafe?: Set<string> }> = {
  StringValue: {
    methods: new Set([
      ...["capitalize", "casefold", "center", "count", "encode", "endswith", "expandtabs", "find", "format"],
      ...["format_map", "index", "isalnum", "isalpha", "isascii", "isdecimal", "isdigit", "isidentifier"],
      ...["islower", "isnumeric", "isprintable", "isspace", "istitle", "isupper", "join", "ljust", "lower"],
      ...["lstrip", "maketrans", "partition", "removeprefix", "removesuffix", "replace", "rfind", "rindex"],
      ...["rjust", "rpartition", "rsplit", "rstrip", "split", "splitlines", "startswith", "strip", "swapcase"],
      ...["title", "translate", "upper", "zfill"],
    ]),
  },
  NullValue: { methods: new Set() },
  ArrayValue: {
    methods: new Set(["count", "index", "copy"]),
    unsafe: new Set(["append", "clear", "extend", "insert", "pop", "remove", "reverse", "sort"]),
  },
  TupleValue: { methods: new Set(["count", "index"]) },
};

/** Jinja2's error for a call of a method that `self`'s Python type lacks or the sandbox refuses, if it is one. */
function missingMethod(self: Rendered, method: string): string | undefined {
  const python = PYTHON_METHODS[self.type];
  if (!python || python.methods.has(method)) return undefined;
  const type = PYTHON_TYPE_NAMES[self.type]!;
  if (python.unsafe?.has(method)) return `access to attribute '${method}' of '${type}' object is unsafe.`;
  return self.type === "NullValue"
    ? `'None' has no attribute '${method}'`
    : `'${type} object' has no attribute '${method}'`;
}

/** Whether a dict has int keys (a literal's: see PythonInterpreter's ObjectLiteral), which the library's own methods would give as strings. */
const hasIntKeys = (dict: Rendered) =>
  [...(dict.value as Map<unknown, Rendered>).keys()].some((key) => typeof key === "number");

/** A node that stands for a value already evaluated (see PythonInterpreter's evaluate). */
const evaluated = (value: Rendered) => ({ type: "PythonValue", value }) as unknown as Statement;

/**
 * The library's interpreter, with Jinja2's loop controls, str methods, operators, filters and tests.
 * Its {% break %} and {% continue %} threw away what the loop's body had rendered in that pass
 * (`{{ m.content }}{% break %}` wrote nothing): the bodies withPythonBuiltins marks (PythonLoopBody,
 * PythonBlock) keep it, and a loop whose every pass ended early renders its {% else %}, as Jinja2's
 * does; a loop goes over an undefined value as over nothing. A string's methods the library lacks
 * are STRING_METHODS; `%` formats a string and `*` repeats a string or list (the library knew both
 * only between numbers), `%` takes the divisor's sign, and ==, `in` and string order are Python's.
 * Filters and tests it lacks or has otherwise are PYTHON_FILTERS (pythonFilter) and PYTHON_TESTS.
 * Where a value is looked at before the library's own evaluation, the library is handed it as a
 * PythonValue node (`evaluated`) rather than evaluating it again (only a filter's arguments are,
 * where the library's filter takes over: they are expressions without side effects).
 */
class PythonInterpreter extends Interpreter {
  /** The strings that are Jinja2's Markup (safe: what `+` adds to one is escaped). */
  private readonly markups = new WeakSet<Rendered>();

  /** Jinja2's escape: str() of a value with its HTML characters escaped, Markup as it is. */
  private escaped(value: Rendered): string {
    if (this.markups.has(value)) return value.value as string;
    const html: Record<string, string> = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&#34;", "'": "&#39;" };
    return pythonStr(value).replace(/[&<>"']/g, (char) => html[char]!);
  }

  /** Text as Markup (see markups). */
  private markup(text: string): Rendered {
    const value = this.value(text);
    this.markups.add(value);
    return value;
  }

  /** The loops being rendered, innermost last. */
  private readonly loops: { entered: boolean; broken: boolean; completed: boolean; changed?: Rendered }[] = [];

  override evaluate(statement: Statement, environment: Environment): Rendered {
    const node = statement as unknown as { type: string; body: Statement[]; defaultBlock: Statement[] };
    switch (node?.type) {
      case "Break":
      case "Continue":
        throw new LoopControl(node.type);
      case "PythonBlock":
        return this.value(this.block(node.body, environment));
      case "PythonLoopBody": {
        const loop = this.loops.at(-1)!;
        if (loop.broken) return this.value(""); // the library goes on through the rest
        loop.entered = true;
        try {
          // Each pass in a scope of its own, as Jinja2's: what a pass sets is gone at the next (the
          // library's one scope for the loop kept it: vLLM's Gemma 3 pythonic template, which sets
          // `first = false` after a call's first argument, wrote the ", " Jinja2 does not).
          const rendered = this.block(node.body, new Environment(environment));
          loop.completed = true;
          return this.value(rendered);
        } catch (error) {
          if (!(error instanceof LoopControl)) throw error;
          loop.broken ||= error.kind === "Break";
          return this.value(error.rendered);
        }
      }
      case "For": {
        const loop = { entered: false, broken: false, completed: false };
        this.loops.push(loop);
        let rendered: string;
        try {
          rendered = super.evaluate(this.iterated(statement, environment), environment).value as string;
        } finally {
          this.loops.pop();
        }
        // The library renders the else of a loop over nothing; Jinja2's, of a loop no pass of which ran to its end.
        if (loop.entered && !loop.completed && node.defaultBlock.length > 0)
          rendered += this.block(node.defaultBlock, environment);
        return this.value(rendered);
      }
      case "PythonValue":
        return (node as unknown as { value: Rendered }).value;
      case "ObjectLiteral": {
        // A dict's keys may be ints, as Python's (the library's took only strings: Seed-OSS's
        // template looks up its thinking budget's reflection interval in {0: 0, 512: 128, ...}).
        const dict = super.evaluate({ type: "ObjectLiteral", value: new Map() } as unknown as Statement, environment);
        const entries = dict.value as Map<string | number, Rendered>;
        for (const [key, value] of (node as unknown as { value: Map<Statement, Statement> }).value) {
          const evaluatedKey = this.evaluate(key, environment);
          if (evaluatedKey.type !== "StringValue" && evaluatedKey.type !== "IntegerValue")
            throw new Error(`Object keys must be strings or ints: got ${evaluatedKey.type}`);
          const name =
            evaluatedKey.type === "IntegerValue" ? Number(evaluatedKey.value) : (evaluatedKey.value as string);
          entries.set(name, this.evaluate(value, environment));
        }
        return dict;
      }
      case "BinaryExpression":
        return this.binary(node as unknown as BinaryNode, environment);
      case "CallExpression":
        return this.call(node as unknown as CallNode, environment);
      case "FilterExpression":
        return this.filter(node as unknown as FilterNode, environment);
      case "MemberExpression": {
        // A string's character by its index in code points (the library's indexed UTF-16 units:
        // the last of a text ending in an emoji was half of it), as its slices already are.
        const member = node as unknown as {
          object: Statement;
          property: Statement & { type: string };
          computed: boolean;
        };
        const object = this.evaluate(member.object, environment);
        // Jinja2's undefined has no attributes nor items: `messages[0].role` of no messages fails
        // the render in transformers (the library's gave another undefined, and rendered on).
        if (object.type === "UndefinedValue")
          throw new TemplateTypeError(
            `${expressionText(member.object)} is undefined (a field the template reads is missing from the request)`,
          );
        if (!member.computed || member.property.type === "SliceExpression")
          return super.evaluate({ ...member, object: evaluated(object) } as unknown as Statement, environment);
        const property = this.evaluate(member.property, environment);
        // None's item is undefined, as Jinja2's (the library refused an index of None).
        if (object.type === "NullValue") return this.value(undefined);
        if (object.type === "ObjectValue" && property.type === "IntegerValue")
          return (object.value as Map<unknown, Rendered>).get(Number(property.value)) ?? this.value(undefined);
        if (object.type === "StringValue" && property.type === "IntegerValue") {
          const points = [...(object.value as string)];
          const index = property.value as number;
          return this.value(points[index < 0 ? points.length + index : index]);
        }
        return super.evaluate(
          { ...member, object: evaluated(object), property: evaluated(property) } as unknown as Statement,
          environment,
        );
      }
      case "TestExpression": {
        const test = node as unknown as { operand: Statement; negate: boolean; test: { value: string } };
        const pythonTest = PYTHON_TESTS[test.test.value];
        if (!pythonTest) return super.evaluate(statement, environment);
        return this.value(pythonTest(this.evaluate(test.operand, environment)) !== test.negate);
      }
      default:
        return super.evaluate(statement, environment);
    }
  }

  /**
   * A loop with what it goes over as Jinja2 iterates it: an undefined value as nothing (a loop
   * over a message's missing tool_calls failed the render), a string by its characters, and
   * tuples unpacked into its variables.
   */
  private iterated(statement: Statement, environment: Environment): Statement {
    const loop = statement as unknown as { iterable: { type: string; lhs?: Statement }; loopvar: { type: string } };
    const select = loop.iterable.type === "SelectExpression" ? loop.iterable : undefined; // for x in y if z
    const source = this.evaluate((select?.lhs ?? loop.iterable) as Statement, environment);
    // Python's TypeError (the library's error read as a feature it lacks): a loop over None, a number...
    if (!ITERABLE.has(source.type))
      throw new TemplateTypeError(`'${PYTHON_TYPE_NAMES[source.type] ?? source.type}' object is not iterable`);
    let iterable =
      source.type === "UndefinedValue"
        ? this.list([])
        : source.type === "StringValue"
          ? this.list([...(source.value as string)].map((char) => this.value(char)))
          : source;
    // The library unpacks only lists into `for a, b in ...`: a tuple ((1, 2), a partition) is one here.
    if (loop.loopvar.type === "TupleLiteral" && (iterable.type === "ArrayValue" || iterable.type === "TupleValue"))
      iterable = this.list(
        (iterable.value as Rendered[]).map((item) =>
          item.type === "TupleValue" ? this.list(item.value as Rendered[]) : item,
        ),
      );
    const replaced = select ? { ...select, lhs: evaluated(iterable) } : evaluated(iterable);
    return { ...loop, iterable: replaced } as unknown as Statement;
  }

  /** Python's `%` (string formatting, and a modulo with the divisor's sign) and `*` (repeating a string or list). */
  private binary(node: BinaryNode, environment: Environment): Rendered {
    const operator = node.operator.value;
    if (!["%", "*", "+", "==", "!=", "<", ">", "<=", ">=", "in", "not in"].includes(operator))
      return super.evaluate(node as unknown as Statement, environment);
    const [left, right] = [this.evaluate(node.left, environment), this.evaluate(node.right, environment)];
    // A string adds only a string, as in Python (the library wrote a dict added to one as "[object Map]").
    // Markup (`| safe`, `| escape`) added to a str escapes the str, as Jinja2's Markup: functionary
    // v3.1's template adds each tool's JSON to "..."|safe, and transformers writes its quotes as &#34;.
    if (
      operator === "+" &&
      left.type === "StringValue" &&
      right.type === "StringValue" &&
      (this.markups.has(left) || this.markups.has(right))
    )
      return this.markup(this.escaped(left) + this.escaped(right));
    if (operator === "+" && (left.type === "StringValue") !== (right.type === "StringValue")) {
      const other = left.type === "StringValue" ? right : left;
      const missing =
        other.type === "UndefinedValue" ? " (a field the template reads is missing from the request)" : "";
      throw new TemplateTypeError(
        `can only concatenate str (not "${PYTHON_TYPE_NAMES[other.type] ?? other.type}") to str${missing}`,
      );
    }
    if (operator === "==" || operator === "!=") return this.value(pythonEqual(left, right) === (operator === "=="));
    // `x in none` (a message's content None): Python's TypeError, not a feature the library lacks.
    if ((operator === "in" || operator === "not in") && !ITERABLE.has(right.type))
      throw new TemplateTypeError(`argument of type '${PYTHON_TYPE_NAMES[right.type] ?? right.type}' is not iterable`);
    // A list holds a value equal to it (the library refused None and lists and dicts there, and compared numbers by type).
    if ((operator === "in" || operator === "not in") && (right.type === "ArrayValue" || right.type === "TupleValue"))
      return this.value((right.value as Rendered[]).some((item) => pythonEqual(item, left)) === (operator === "in"));
    // Strings are ordered by their code points (the library refused to compare them).
    if (["<", ">", "<=", ">="].includes(operator) && left.type === "StringValue" && right.type === "StringValue") {
      const order = compareCodePoints(left.value as string, right.value as string);
      return this.value(
        operator === "<" ? order < 0 : operator === ">" ? order > 0 : operator === "<=" ? order <= 0 : order >= 0,
      );
    }
    const operands = { ...node, left: evaluated(left), right: evaluated(right) };
    if (operator === "%" && left.type === "StringValue")
      return this.value(pythonPercentFormat(left.value as string, right as TemplateValue));
    if (operator === "*") {
      const [sequence, times] = right.type === "IntegerValue" ? [left, right] : [right, left];
      const count = times.type === "IntegerValue" ? Math.max(0, times.value as number) : undefined;
      if (count !== undefined && sequence.type === "StringValue")
        return this.value((sequence.value as string).repeat(count));
      if (count !== undefined && sequence.type === "ArrayValue") {
        const items = Array.from({ length: count }, () => (sequence.value as Rendered[]).map(evaluated)).flat();
        return super.evaluate({ type: "ArrayLiteral", value: items } as unknown as Statement, environment);
      }
    }
    const result = super.evaluate(operands as unknown as Statement, environment);
    const divisor = right.value as number;
    // JavaScript's remainder takes the dividend's sign, Python's modulo the divisor's: -7 % 3 is 2.
    if (operator === "%" && typeof result.value === "number" && result.value !== 0 && result.value < 0 !== divisor < 0)
      return super.evaluate(
        { ...operands, operator: { value: "+" }, left: evaluated(result) } as unknown as Statement,
        environment,
      );
    return result;
  }

  /** Python's str methods the library lacks (STRING_METHODS), called on a string. */
  private call(node: CallNode, environment: Environment): Rendered {
    const { callee } = node;
    const method = callee.type === "MemberExpression" && !callee.computed ? callee.property.value : undefined;
    // loop.changed(value...), which the library's loop lacks: whether the values differ from the last call's.
    const loop = this.loops.at(-1);
    const object = callee.object as unknown as { type: string; value: unknown } | undefined;
    if (method === "changed" && object?.type === "Identifier" && object.value === "loop" && loop) {
      const values = this.tuple(this.arguments(node.args, environment).args);
      const changed = loop.changed === undefined || !pythonEqual(loop.changed, values);
      loop.changed = values;
      return this.value(changed);
    }
    if (method === undefined) return super.evaluate(node as unknown as Statement, environment);
    const self = this.evaluate(callee.object, environment);
    const missing = missingMethod(self, method);
    if (missing !== undefined) throw new TemplateTypeError(missing);
    // A dict with int keys gives them as ints (the library's items and keys made them strings).
    if (self.type === "ObjectValue" && hasIntKeys(self) && (method === "items" || method === "keys")) {
      const items = this.items(self);
      return this.list(method === "items" ? items : items.map((pair) => (pair.value as Rendered[])[0]!));
    }
    if (!Object.hasOwn(STRING_METHODS, method))
      return super.evaluate(
        { ...node, callee: { ...callee, object: evaluated(self) } } as unknown as Statement,
        environment,
      );
    // A list's count and index, by Python's ==.
    if ((self.type === "ArrayValue" || self.type === "TupleValue") && (method === "count" || method === "index")) {
      const [wanted] = this.arguments(node.args, environment).args;
      const items = self.value as Rendered[];
      if (method === "count") return this.value(items.filter((item) => pythonEqual(item, wanted!)).length);
      const at = items.findIndex((item) => pythonEqual(item, wanted!));
      if (at < 0) throw new Error(`${pythonStr(wanted)} is not in list`);
      return this.value(at);
    }
    if (self.type !== "StringValue")
      return super.evaluate(
        { ...node, callee: { ...callee, object: evaluated(self) } } as unknown as Statement,
        environment,
      );
    const result = STRING_METHODS[method]!(self.value as string, this.arguments(node.args, environment));
    // partition and rpartition give tuples, as Python's do
    if (method.endsWith("partition")) return this.tuple((result as string[]).map((part) => this.value(part)));
    return this.value(result);
  }

  /** A call's positional and keyword arguments, evaluated. */
  private arguments(nodes: ArgumentNode[], environment: Environment): MethodArgs {
    const args: Rendered[] = [];
    const kwargs = new Map<string, Rendered>();
    for (const arg of nodes) {
      if (arg.type === "KeywordArgumentExpression") kwargs.set(arg.key!.value, this.evaluate(arg.value, environment));
      else args.push(this.evaluate(arg as unknown as Statement, environment));
    }
    return { args, kwargs };
  }

  private filter(node: FilterNode, environment: Environment): Rendered {
    const name = node.filter.type === "CallExpression" ? node.filter.callee!.value : node.filter.value!;
    if (!PYTHON_FILTERS.has(name)) return super.evaluate(node as unknown as Statement, environment);
    const operand = this.evaluate(node.operand, environment);
    const call = this.arguments(node.filter.args ?? [], environment);
    return (
      this.pythonFilter(name, operand, call, environment) ??
      super.evaluate({ ...node, operand: evaluated(operand) } as unknown as Statement, environment)
    );
  }

  /**
   * Jinja2's filters where the library lacks them, or has them only for some values or forms
   * (map with a filter's name, select and reject, a test taking an argument, trim with
   * characters, first and last of a string...); undefined where the library's does as Jinja2's.
   */
  private pythonFilter(name: string, operand: Rendered, { args, kwargs }: MethodArgs, environment: Environment) {
    const items = (): Rendered[] => {
      if (operand.type === "StringValue") return [...(operand.value as string)].map((char) => this.value(char));
      if (operand.type === "ArrayValue" || operand.type === "TupleValue") return operand.value as Rendered[];
      if (operand.type === "ObjectValue")
        return [...(operand.value as Map<string, Rendered>).keys()].map((key) => this.value(key));
      if (operand.type === "UndefinedValue") return []; // Jinja2's undefined iterates as nothing
      throw new Error(`'${operand.type}' is not iterable for the ${name} filter`);
    };
    const isString = operand.type === "StringValue";
    const argument = (position: number, keyword: string) => args[position] ?? kwargs.get(keyword);
    // An item, or its attribute at `path` where the filter names one.
    const itemAt = (item: Rendered, path: Rendered | undefined) =>
      path === undefined ? item : this.attribute(item, stringArgument(path, `${name}()'s attribute`));
    switch (name) {
      case "items": // of a mapping (the library's), of undefined nothing; of a call's arguments given as text, Python's TypeError
        if (operand.type === "UndefinedValue") return this.list([]);
        if (operand.type === "ObjectValue" && hasIntKeys(operand)) return this.list(this.items(operand));
        if (operand.type === "ObjectValue" || operand.type === "KeywordArgumentsValue") return undefined;
        throw new TemplateTypeError("Can only get item pairs from a mapping.");
      case "dictsort": {
        // The library's, but of a dict with int keys (which it would give as strings), sorted by key or value.
        if (operand.type !== "ObjectValue" || !hasIntKeys(operand)) return undefined;
        const position = argument(1, "by")?.value === "value" ? 1 : 0;
        const sign = argument(2, "reverse")?.value === true ? -1 : 1;
        const pairs = this.items(operand).map((pair) => pair.value as Rendered[]);
        pairs.sort(([...a], [...b]) => {
          const [x, y] = [a[position]!.value as number | string, b[position]!.value as number | string];
          return sign * (x < y ? -1 : x > y ? 1 : 0);
        });
        return this.list(pairs.map((pair) => this.tuple(pair)));
      }
      case "d": // Jinja2's short name for default
        return this.filtered(operand, "default", args, kwargs, environment);
      // As withPythonBuiltins rewrites them where a template names them, for map's.
      case "string":
        return this.value(pythonStr(operand));
      case "length":
      case "count":
        return this.value(pythonLen(operand));
      // Of str() of any value (lower of None is "none"), and capitalize and title as Python's.
      case "capitalize":
      case "title":
        return this.value(STRING_METHODS[name]!(pythonStr(operand), { args: [], kwargs: new Map() }));
      case "upper":
        return this.value(pythonStr(operand).toUpperCase());
      case "lower":
        return this.value(pythonStr(operand).toLowerCase());
      case "unique": {
        // Jinja2's: the first of each value, strings compared without case unless case_sensitive.
        const caseSensitive = argument(0, "case_sensitive")?.value === true;
        const path = argument(1, "attribute");
        const seen = new Set<string>();
        return this.list(
          items().filter((item) => {
            let key = itemAt(item, path);
            if (key.type === "StringValue" && !caseSensitive) key = this.value((key.value as string).toLowerCase());
            const identity = NUMERIC.has(key.type) ? `number ${Number(key.value)}` : pythonRepr(key);
            return !seen.has(identity) && Boolean(seen.add(identity));
          }),
        );
      }
      case "int":
      case "float": {
        // Jinja2's int and float give their default (0) for what they cannot convert, None too.
        if (operand.type !== "NullValue" && operand.type !== "UndefinedValue") return undefined;
        const fallback = argument(0, "default");
        return fallback ?? (name === "int" ? this.value(0) : this.float(0));
      }
      case "escape":
      case "e":
        return this.markup(this.escaped(operand));
      case "safe":
        return this.markup(operand.type === "StringValue" ? (operand.value as string) : pythonStr(operand));
      case "tojson": {
        // transformers' tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)
        const indent = argument(1, "indent");
        const separators = argument(2, "separators");
        const indentWidth = indent === undefined || indent.type === "NullValue" ? null : Number(indent.value);
        return this.value(
          pythonJson(operand, {
            ensureAscii: argument(0, "ensure_ascii")?.value === true,
            indent: indentWidth,
            separators:
              separators === undefined || separators.type === "NullValue"
                ? [indentWidth === null ? ", " : ",", ": "]
                : ((separators.value as Rendered[]).map((part) => stringArgument(part, "a separator")) as [
                    string,
                    string,
                  ]),
            sortKeys: argument(3, "sort_keys")?.value === true,
          }),
        );
      }
      case "join": {
        const path = argument(1, "attribute");
        const parts = items().map((item) => pythonStr(itemAt(item, path)));
        return this.value(
          parts.join(argument(0, "d") === undefined ? "" : stringArgument(argument(0, "d"), "join()'s separator")),
        );
      }
      case "map": {
        if (!operand.__bool__().value) return this.list([]); // Jinja2 maps nothing of a false value, None included
        if (kwargs.has("attribute") || args.length === 0) return undefined;
        const [filterName, ...rest] = args;
        const mapped = stringArgument(filterName, "map()'s filter");
        return this.list(items().map((item) => this.filtered(item, mapped, rest, kwargs, environment)));
      }
      case "select":
      case "reject":
      case "selectattr":
      case "rejectattr": {
        if (!operand.__bool__().value) return this.list([]); // as map, of None (tool_calls: null) too
        const byAttribute = name.endsWith("attr");
        const [attribute, test, ...testArgs] = byAttribute ? args : [undefined, ...args];
        const testArgument = testArgs[0];
        const path = byAttribute ? stringArgument(attribute, `${name}()'s attribute`) : undefined;
        const keep = name.startsWith("select");
        return this.list(
          items().filter(
            (item) =>
              this.passes(path === undefined ? item : this.attribute(item, path), test, testArgument, environment) ===
              keep,
          ),
        );
      }
      case "sum": {
        const path = argument(0, "attribute");
        let total: Rendered = argument(1, "start") ?? this.value(0);
        for (const item of items()) {
          const value = itemAt(item, path);
          total = this.operation("+", total, value, environment);
        }
        return total;
      }
      case "round": {
        if (operand.type !== "IntegerValue" && operand.type !== "FloatValue") return undefined;
        const precision = integer(argument(0, "precision"), 0);
        const method = argument(1, "method")?.value ?? "common";
        const x = operand.value as number;
        if (method === "common")
          return operand.type === "IntegerValue" ? operand : this.float(Number(pythonFixed(x, precision)));
        const scale = 10 ** precision;
        if (method === "ceil" || method === "floor") return this.float(Math[method](x * scale) / scale);
        throw new Error("round(): method must be 'common', 'ceil' or 'floor'");
      }
      case "first":
      case "last":
        if (!isString) return undefined;
        return items().at(name === "first" ? 0 : -1) ?? this.value(undefined);
      case "reverse":
        return isString ? this.value([...(operand.value as string)].reverse().join("")) : undefined;
      case "list":
        return isString || operand.type === "ObjectValue" ? this.list(items()) : undefined;
      case "min":
      case "max": {
        const caseSensitive = argument(0, "case_sensitive")?.value === true;
        const key = (value: Rendered) =>
          value.type === "StringValue" && !caseSensitive ? (value.value as string).toLowerCase() : value.value;
        const candidates = items();
        if (candidates.length === 0) return this.value(undefined);
        return candidates.reduce((best, item) => {
          const [a, b] = [key(item) as number, key(best) as number];
          return (name === "min" ? a < b : a > b) ? item : best;
        });
      }
      case "trim":
        return this.value(pythonStrip("strip", pythonStr(operand as TemplateValue), argument(0, "chars")?.value));
      case "center":
        return this.value(
          pythonPad(pythonStr(operand as TemplateValue), integer(argument(0, "width"), 80), " ", "center"),
        );
      case "format": {
        // Jinja2's format filter is `value % kwargs` given keywords, else `value % args`.
        const values: TemplateValue = kwargs.size > 0 ? { type: "ObjectValue", value: kwargs } : this.tuple(args);
        return this.value(pythonPercentFormat(stringArgument(operand, "format's value"), values));
      }
      case "wordcount":
        return this.value(pythonStr(operand as TemplateValue).match(/[\p{L}\p{N}_]+/gu)?.length ?? 0); // Python's \w
      case "batch": {
        const size = integer(argument(0, "linecount"), 1);
        const fill = argument(1, "fill_with");
        const all = items();
        const batches: Rendered[] = [];
        for (let at = 0; at < all.length; at += size) {
          const batch = all.slice(at, at + size);
          while (fill !== undefined && fill.type !== "NullValue" && batch.length < size) batch.push(fill);
          batches.push(this.list(batch));
        }
        return this.list(batches);
      }
    }
    return undefined;
  }

  /** A filter by name (map's, or default for d), given a value and its arguments. */
  private filtered(
    operand: Rendered,
    name: string,
    args: Rendered[],
    kwargs: Map<string, Rendered>,
    environment: Environment,
  ): Rendered {
    const keywords = [...kwargs].map(([key, value]) => ({
      type: "KeywordArgumentExpression",
      key: { value: key },
      value: evaluated(value),
    }));
    const identifier = { type: "Identifier", value: name };
    const filter =
      args.length + keywords.length > 0
        ? { type: "CallExpression", callee: identifier, args: [...args.map(evaluated), ...keywords] }
        : identifier;
    return this.evaluate(
      { type: "FilterExpression", operand: evaluated(operand), filter } as unknown as Statement,
      environment,
    );
  }

  /** Whether a value passes a select/reject test: a test's name (with its argument), or its truth without one. */
  private passes(
    value: Rendered,
    test: Rendered | undefined,
    testArgument: Rendered | undefined,
    environment: Environment,
  ): boolean {
    if (test === undefined) return value.__bool__().value as boolean;
    const name = stringArgument(test as TemplateValue, "a test's name");
    const operator = COMPARISON_TESTS[name];
    if (operator !== undefined && testArgument !== undefined)
      return this.operation(operator, value, testArgument, environment).value === true;
    if (name === "divisibleby") return (value.value as number) % (testArgument?.value as number) === 0;
    return (
      this.evaluate(
        {
          type: "TestExpression",
          operand: evaluated(value),
          negate: false,
          test: { type: "Identifier", value: name },
        } as unknown as Statement,
        environment,
      ).value === true
    );
  }

  /** `left operator right` of two values, as the template would write it (Python's +, ==, in...). */
  private operation(operator: string, left: Rendered, right: Rendered, environment: Environment): Rendered {
    return this.evaluate(
      {
        type: "BinaryExpression",
        operator: { value: operator },
        left: evaluated(left),
        right: evaluated(right),
      } as unknown as Statement,
      environment,
    );
  }

  /** Jinja2's attribute by a dotted path (selectattr's "function.name"), undefined where there is none. */
  private attribute(item: Rendered, path: string): Rendered {
    let value = item;
    for (const part of path.split(".")) {
      const map = value.value instanceof Map ? (value.value as Map<string, Rendered>) : undefined;
      const list = Array.isArray(value.value) && /^\d+$/.test(part) ? (value.value as Rendered[]) : undefined;
      value = map?.get(part) ?? list?.[Number(part)] ?? this.value(undefined);
    }
    return value;
  }

  /** A dict's items as (key, value) tuples, an int key as an int. */
  private items(dict: Rendered): Rendered[] {
    return [...(dict.value as Map<string | number, Rendered>)].map(([key, value]) =>
      this.tuple([this.value(key), value]),
    );
  }

  private list(items: Rendered[]): Rendered {
    return super.evaluate(
      { type: "ArrayLiteral", value: items.map(evaluated) } as unknown as Statement,
      new Environment(),
    );
  }

  private tuple(items: Rendered[]): Rendered {
    return super.evaluate(
      { type: "TupleLiteral", value: items.map(evaluated) } as unknown as Statement,
      new Environment(),
    );
  }

  private float(value: number): Rendered {
    return super.evaluate({ type: "FloatLiteral", value } as unknown as Statement, new Environment());
  }

  /** A JavaScript value as the library holds it (its classes are not exported; its Environment converts). */
  private value(value: unknown): Rendered {
    const scratch = new Environment();
    scratch.set("value", value);
    return scratch.lookupVariable("value");
  }

  /** Renders statements as the library's evaluateBlock does, a loop control taking along what they rendered. */
  private block(statements: Statement[], environment: Environment): string {
    let rendered = "";
    for (const statement of statements) {
      let value: Rendered;
      try {
        value = this.evaluate(statement, environment);
      } catch (error) {
        if (error instanceof LoopControl) error.rendered = rendered + error.rendered;
        throw error;
      }
      if (value.type !== "NullValue" && value.type !== "UndefinedValue") rendered += value.toString();
    }
    return rendered;
  }
}

/**
 * A chat template's source parsed as Python's Jinja2 reads it, rewritten by withPythonBuiltins:
 * its line breaks are "\n" whatever they were (Jinja2's lexer writes \r\n and \r as \n; the
 * library kept them, and its trim_blocks and lstrip_blocks, which look for \n, left a template
 * saved with Windows line endings full of blank lines).
 */
export function parseTemplate(source: string): Template {
  let template: Template;
  try {
    template = new Template(source.replace(/\r\n?/g, "\n"));
  } catch (error) {
    throw new TemplateParseError((error as Error).message, { cause: error });
  }
  return withPythonBuiltins(template);
}

/**
 * A template the library's parser could not read: a syntax error in it, or syntax of Jinja2's the
 * parser lacks, which cannot be told apart here (its message for a block left open is
 * JavaScript's own, "undefined is not an object").
 */
export class TemplateParseError extends Error {
  override name = "TemplateParseError";
}

/** Renders a template (withPythonBuiltins') with these variables, as Python's Jinja2 renders it. */
export function renderTemplate(template: Template, variables: Record<string, unknown>): string {
  const environment = new Environment();
  const globals = { true: true, false: false, none: null, True: true, False: false, None: null, range: pythonRange };
  for (const [name, value] of Object.entries({ ...globals, ...variables, ...PYTHON_BUILTINS }))
    withPythonValues(value, environment.set(name, value));
  return new PythonInterpreter(environment).run(template.parsed).value as string;
}

/** The library's class of integers (not exported), taken from one it made. */
const IntegerValue = new Environment().set("one", 1).constructor as new (value: bigint) => Rendered;

/**
 * Gives the template the integers past 2^53 that tool calls' arguments kept exact (exact-json.ts)
 * as Python's ints, exact: the library's conversion made each a dict of its digits. And a field
 * whose value is undefined is no key of its dict, as JSON would carry it to transformers: the
 * library kept it, so a tool result without a name (`name: undefined`) had one, None, and Kimi
 * K2's `message.get('name', 'unknown')` gave nothing, `'name' in message` was True, and tojson
 * wrote it as null.
 */
function withPythonValues(input: unknown, converted: Rendered): Rendered {
  if (isExactInteger(input)) return new IntegerValue(BigInt(input.rawJSON));
  if (Array.isArray(input)) {
    const items = converted.value as Rendered[];
    input.forEach((item, i) => {
      items[i] = withPythonValues(item, items[i]!);
    });
  } else if (input && typeof input === "object") {
    const entries = converted.value as Map<string, Rendered>;
    for (const [key, item] of Object.entries(input)) {
      if (item === undefined) entries.delete(key);
      else entries.set(key, withPythonValues(item, entries.get(key)!));
    }
  }
  return converted;
}
