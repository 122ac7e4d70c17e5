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

  test("each schema is compiled on its own: two with the same $id each check their own answer", () => {
    // Ajv registered every schema it compiled under its $id (and kept it for good): a second
    // schema with the same $id was refused ("schema with key or id ... already exists").
    const $id = "https://example.com/answer";
    const first = compileAnswerSchema({ $id, type: "object", required: ["a"] });
    const second = compileAnswerSchema({ $id, type: "object", required: ["b"] });
    expect([first({ a: 1 }), first({ b: 1 }), second({ b: 1 }), second({ a: 1 })]).toEqual([true, false, true, false]);
    const recursive = compileAnswerSchema({
      $id,
      type: "object",
      properties: { child: { $ref: "#" } },
      required: ["c"],
    });
    expect([recursive({ c: 1, child: { c: 2 } }), recursive({ c: 1, child: {} })]).toEqual([true, false]);
  });

  test("many different schemas compiled leave no memory behind (Ajv's instance is renewed)", () => {
    const heapAfter = (from: number, count: number) => {
      for (let i = from; i < from + count; i++)
        compileAnswerSchema({ type: "object", properties: { [`field${i}`]: { type: "string" } } });
      Bun.gc(true);
      return process.memoryUsage().heapUsed;
    };
    const warm = heapAfter(0, 600);
    // Ajv kept each compiled schema and its code in its instance: ~5.5 MB more per 2,000.
    expect(heapAfter(600, 2000) - warm).toBeLessThan(2_000_000);
  }, 60_000);
});
