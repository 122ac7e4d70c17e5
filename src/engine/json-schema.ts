// JSON Schema validators for answers (a remote model's, a benchmark prompt's), one Ajv per draft
// and error mode, made on first use: building one costs start-up time every command would pay.
import Ajv, { type ValidateFunction } from "ajv";
import Ajv2020 from "ajv/dist/2020";

// Ajv keeps what each compile makes in its instance for good (the generated code's scope), and
// answers' schemas come from requests: an instance is let go after this many compiles (the
// validators made on it keep working), so a server's memory does not grow with every new schema.
export const COMPILES_PER_INSTANCE = 256;
const instances = new Map<string, { ajv: Ajv; compiles: number }>();
let compiles = 0;

/** Schemas compiled since start (for tests: what is cached must not be compiled again). */
export const answerSchemaCompiles = (): number => compiles;

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
  const ajv = draftAjv(draft2020, o.allErrors);
  const validate = ajv.compile(rest);
  // Ajv registers what it compiles (by object and $id) for good: a second schema with the same
  // $id was refused, and each schema compiled stayed in memory. The function needs none of it.
  ajv.removeSchema(rest);
  return validate;
}

function draftAjv(draft2020: boolean, allErrors = false): Ajv {
  const key = `${draft2020 ? "2020-12" : "draft-07"}/${allErrors}`;
  let entry = instances.get(key);
  if (!entry || entry.compiles >= COMPILES_PER_INSTANCE) {
    const options = { strict: false, validateFormats: false, allErrors };
    instances.set(key, (entry = { ajv: draft2020 ? new Ajv2020(options) : new Ajv(options), compiles: 0 }));
  }
  entry.compiles++;
  compiles++;
  return entry.ajv;
}
