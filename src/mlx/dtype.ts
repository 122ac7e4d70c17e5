// MLX dtypes by the codes the shim uses (the order of mlx::core::Dtype::Val).
export const Dtype = {
  bool: 0,
  uint8: 1,
  uint16: 2,
  uint32: 3,
  uint64: 4,
  int8: 5,
  int16: 6,
  int32: 7,
  int64: 8,
  float16: 9,
  float32: 10,
  float64: 11,
  bfloat16: 12,
  complex64: 13,
} as const;

export type DtypeName = keyof typeof Dtype;
export type DtypeCode = (typeof Dtype)[DtypeName];

const names = Object.fromEntries(Object.entries(Dtype).map(([k, v]) => [v, k])) as Record<number, DtypeName>;

export function dtypeName(code: number): DtypeName {
  const name = names[code];
  if (!name) throw new Error(`unknown dtype code ${code}`);
  return name;
}

export function dtypeFromName(name: string): DtypeCode {
  if (!(name in Dtype)) throw new Error(`unknown dtype '${name}' (known: ${Object.keys(Dtype).join(", ")})`);
  return Dtype[name as DtypeName];
}

export const itemSize: Record<DtypeName, number> = {
  bool: 1,
  uint8: 1,
  uint16: 2,
  uint32: 4,
  uint64: 8,
  int8: 1,
  int16: 2,
  int32: 4,
  int64: 8,
  float16: 2,
  float32: 4,
  float64: 8,
  bfloat16: 2,
  complex64: 8,
};

export function isFloating(code: number): boolean {
  return code === Dtype.float16 || code === Dtype.float32 || code === Dtype.float64 || code === Dtype.bfloat16;
}

/** The largest finite value of a float dtype (float32's for any other): past it a value is infinite. */
export function largestFinite(code: number): number {
  if (code === Dtype.float16) return 65504;
  if (code === Dtype.bfloat16) return 3.3895e38;
  return 3.4028e38;
}
