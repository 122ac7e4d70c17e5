// The typed errors that cross layers, and the one place each front end maps them: a CLI line
// (src/cmd/errors.ts) and an HTTP status with an error code (src/server/errors.ts).
import { describe, expect, test } from "bun:test";
import { errorLine } from "../src/cmd/errors";
import { SchemaError } from "../src/engine/grammar";
import {
  ChatTemplateUnsupportedError,
  ContextLengthError,
  InvalidParameterError,
  ModelNotFoundError,
  ModelPullError,
  QueueFullError,
  UnsupportedError,
} from "../src/errors";
import { ModelLoadError } from "../src/models/load";
import { toApiError } from "../src/server/errors";

const cases: [Error, number, string | null, RegExp][] = [
  [new ModelNotFoundError("unknown model 'x'"), 404, "model_not_found", /^unknown model 'x' \(mlx list/],
  [
    new ModelPullError("model 'x' is not in the store yet, and pulling it failed: offline"),
    502,
    "model_pull_failed",
    /not in the store yet/,
  ],
  [
    new ModelPullError("pulling 'x' failed: not enough disk space in /store for x", {
      cause: Object.assign(new Error("not enough disk space in /store for x"), { code: "ENOSPC" }),
    }),
    507,
    "insufficient_storage",
    /not enough disk space/,
  ],
  [new ContextLengthError("the prompt is 300 tokens"), 400, "context_length_exceeded", /; shorten the prompt/],
  [new InvalidParameterError("top_p must be in (0, 1]", "top_p"), 400, null, /^invalid option: top_p/],
  [
    new InvalidParameterError("the model's chat template rejected the messages: roles must alternate", "messages"),
    400,
    null,
    /^invalid input: the model's chat template/,
  ],
  [new UnsupportedError("this model has no chat template", "messages"), 400, "unsupported", /no chat template/],
  [
    new ChatTemplateUnsupportedError(
      "the model's chat template uses a feature of Python's Jinja2 that mlx's template renderer lacks: x",
    ),
    500,
    "chat_template_unsupported",
    /^the model's chat template uses a feature/,
  ],
  [new SchemaError("invalid schema: x"), 400, "invalid_schema", /^invalid schema/],
  [new QueueFullError("the queue is full"), 429, "queue_full", /try again/],
  [new ModelLoadError("cannot load x\nmore detail"), 500, "model_load_failed", /^cannot load x$/],
];

describe("typed errors", () => {
  for (const [error, status, code, line] of cases) {
    test(`${error.name}: HTTP ${status}, and one CLI line`, () => {
      const api = toApiError(error);
      expect(api.status).toBe(status);
      expect(api.code).toBe(code);
      expect(errorLine(error)).toMatch(line);
      expect(errorLine(error)).not.toContain("\n");
    });
  }

  test("a chat template the renderer cannot render is not retried by OpenAI's and Anthropic's clients", () => {
    expect(toApiError(new ChatTemplateUnsupportedError("x")).headers).toEqual({ "x-should-retry": "false" });
  });

  test("an invalid parameter names it in the HTTP error", () => {
    expect(toApiError(new InvalidParameterError("bad", "logit_bias")).param).toBe("logit_bias");
  });

  test("anything else is a bare 500 for HTTP (reported to the log) and its first line for the CLI", () => {
    const logged: unknown[] = [];
    const api = toApiError(new Error("boom\nstack"), (e) => logged.push(e));
    expect([api.status, api.message, logged.length]).toEqual([500, "internal server error", 1]);
    expect(errorLine(new Error("boom\nstack"))).toBe("boom");
  });
});
