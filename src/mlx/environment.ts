// The environment variables our shim's kernels read in C++ (ffi/src/kernels/, malloc_reuse.cpp),
// and the huge pages' switch (src/mlx/memory.ts), checked where a command starts: each takes a
// value it does not know as unset, without a word, so MLX_CPU_THREADS=two would run on every
// core, MLX_KERNELS=off with our kernels on and MLX_HUGE_PAGES=off with huge pages on. So is the
// KV cache's dtype (src/models/cache-dtype.ts), read only once a model's cache is made: else a
// server would start, and fail every request.

const ISAS = ["portable", "neon", "avx2", "avx512"];
const SWITCHES = ["MLX_CPU_EXACT", "MLX_CPU_INT8", "MLX_MALLOC_REUSE", "MLX_HUGE_PAGES"];
/** MLX_KV_DTYPE's values. */
export const KV_DTYPES = ["float16", "float32"] as const;

/** What is wrong with the kernels' variables in `env`, in one line; undefined when nothing is. */
export function kernelEnvironmentProblem(env: Record<string, string | undefined> = process.env): string | undefined {
  const { MLX_KERNELS: kernels, MLX_CPU_ISA: isa, MLX_CPU_THREADS: threads } = env;
  if (kernels && kernels !== "mlx")
    return `MLX_KERNELS must be 'mlx' (MLX's own kernels) or unset (ours), not '${kernels}'`;
  if (isa && !ISAS.includes(isa)) return `MLX_CPU_ISA must be ${ISAS.join(", ")} or unset, not '${isa}'`;
  if (threads && !/^[1-9][0-9]*$/.test(threads))
    return `MLX_CPU_THREADS must be a number of threads (1 or more) or unset, not '${threads}'`;
  const kvDtype = env.MLX_KV_DTYPE;
  if (kvDtype && !(KV_DTYPES as readonly string[]).includes(kvDtype))
    return `MLX_KV_DTYPE must be ${KV_DTYPES.join(" or ")}, not '${kvDtype}'`;
  for (const name of SWITCHES) {
    const value = env[name];
    if (value && value !== "0" && value !== "1") return `${name} must be 1, 0 or unset, not '${value}'`;
  }
  return undefined;
}
