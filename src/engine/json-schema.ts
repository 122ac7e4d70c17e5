// JSON Schema validators for answers (a remote model's, a benchmark prompt's), one Ajv per draft
// and error mode, made on first use: building one costs start-up time every command would pay.
import Ajv, { type ValidateFunction } from "ajv";
import Ajv2020 from "ajv/dist/2020";

const instances = new Map<string, Ajv>();

/**
 * Compiles `schema` under its own draft: 2020-12 where it says so (zod's schemas do) or uses
 * prefixItems (only 2019-09 and later have it: under draft-07 a tuple's `items: false` refuses
 * every item), else draft-07, whose array-form `items` older generators write. `allErrors`
 * reports every failure rather than the first. Throws on a schema that does not compile.
 */
export function compileAnswerSchema(schema: object | boolean, o: { allErrors?: boolean } = {}): ValidateFunction {
  if (typeof schema === "boolean") return draftAjv(false, o.allErrors).compile(schema);
  // The draft picks the validator; the declaration itself would send Ajv looking for its meta-schema.
  const { $schema: declared, ...rest } = schema as Record<string, unknown>;
  const draft2020 = /2020-12|2019-09/.test(String(declared ?? "")) || JSON.stringify(rest).includes('"prefixItems"');
  return draftAjv(draft2020, o.allErrors).compile(rest);
}

function draftAjv(draft2020: boolean, allErrors = false): Ajv {
  const key = `${draft2020 ? "2020-12" : "draft-07"}/${allErrors}`;
  let ajv = instances.get(key);
  if (!ajv) {
    const options = { strict: false, validateFormats: false, allErrors };
    instances.set(key, (ajv = draft2020 ? new Ajv2020(options) : new Ajv(options)));
  }
  return ajv;
}
