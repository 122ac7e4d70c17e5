// Answers checked against a schema under the schema's own draft (engine/json-schema.ts).
import { describe, expect, test } from "bun:test";
import { compileAnswerSchema } from "../src/engine/json-schema";

const tuple = { type: "array", prefixItems: [{ type: "integer" }, { type: "string" }], items: false };

describe("compileAnswerSchema", () => {
  test("a tuple (prefixItems, items: false) is read as 2019-09 and later read it, not as draft-07 would", () => {
    const validate = compileAnswerSchema(tuple);
    expect(validate([1, "a"])).toBe(true);
    expect(validate([1, "a", 2])).toBe(false);
    expect(validate(["a", 1])).toBe(false);
  });

  test("a declared draft picks the validator; the declaration itself is not looked up", () => {
    for (const $schema of [
      "https://json-schema.org/draft/2020-12/schema",
      "https://json-schema.org/draft/2019-09/schema",
    ])
      expect(compileAnswerSchema({ $schema, ...tuple })([1, "a"])).toBe(true);
    // Draft-07's array form of items: each position its own schema.
    const old = compileAnswerSchema({
      $schema: "http://json-schema.org/draft-07/schema#",
      type: "array",
      items: [{ type: "integer" }],
    });
    expect(old([1])).toBe(true);
    expect(old(["a"])).toBe(false);
  });

  test("allErrors reports every failure, not only the first", () => {
    const schema = { type: "object", properties: { a: { type: "integer" }, b: { type: "integer" } } };
    const all = compileAnswerSchema(schema, { allErrors: true });
    all({ a: "x", b: "y" });
    expect(all.errors?.length).toBe(2);
    const first = compileAnswerSchema(schema);
    first({ a: "x", b: "y" });
    expect(first.errors?.length).toBe(1);
  });
});
