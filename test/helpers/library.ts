// Shared by the library's tests.
import { InvalidParameterError } from "../../src/index";

/** The error a call fails with, as "param: message"; "no error" when it succeeds. */
export async function errorOf(call: () => Promise<unknown>): Promise<string> {
  try {
    await call();
    return "no error";
  } catch (error) {
    if (!(error instanceof InvalidParameterError)) return `${(error as Error).name}: ${(error as Error).message}`;
    return `${error.param}: ${error.message}`;
  }
}
