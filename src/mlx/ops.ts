// Typed wrappers over the shim's array operations. Names and semantics follow MLX's
// Python API (mlx.core), so model code reads like its mlx-lm counterpart.
import { check, cstr, lib, outPtr, outPtr2, outPtr3, readOut } from "./ffi";
import { type HostTypedArray, MxArray, wrap } from "./array";
import { Dtype, itemSize, type DtypeCode, dtypeName } from "./dtype";

const enum Unary {
  Abs,
  Negative,
  Exp,
  Log,
  Sqrt,
  Rsqrt,
  Sigmoid,
  Tanh,
  Sin,
  Cos,
  Floor,
  Ceil,
  Round,
  LogicalNot,
  StopGradient,
  Copy,
  Square,
  Erf,
  Log1p,
  Contiguous,
}
const enum Binary {
  Add,
  Subtract,
  Multiply,
  Divide,
  Maximum,
  Minimum,
  Power,
  Equal,
  NotEqual,
  Less,
  LessEqual,
  Greater,
  GreaterEqual,
  LogicalAnd,
  LogicalOr,
  Remainder,
  FloorDivide,
  Matmul,
}
const enum Reduce {
  Sum,
  Mean,
  Max,
  Min,
  Prod,
  LogSumExp,
  ArgMax,
  ArgMin,
  All,
  Any,
}

export type Operand = MxArray | number;
type Axes = number | number[] | undefined;

const i32 = (values: number[]) => Int32Array.from(values);

/** A list of handles laid out as the shim expects (an array of pointers). */
export function handles(arrays: MxArray[]): BigUint64Array {
  return BigUint64Array.from(arrays, (a) => BigInt(a.handle));
}

function unary(op: Unary, a: MxArray, what: string): MxArray {
  return wrap(lib.mlxs_unary(outPtr, op, a.handle), what);
}

function binary(op: Binary, a: Operand, b: Operand, what: string): MxArray {
  if (a instanceof MxArray && b instanceof MxArray) return wrap(lib.mlxs_binary(outPtr, op, a.handle, b.handle), what);
  if (a instanceof MxArray) return wrap(lib.mlxs_binary_scalar(outPtr, op, a.handle, b as number, 0), what);
  if (b instanceof MxArray) return wrap(lib.mlxs_binary_scalar(outPtr, op, b.handle, a, 1), what);
  throw new TypeError(`${what}: at least one operand must be an array`);
}

function reduce(op: Reduce, a: MxArray, axes: Axes, keepdims: boolean, what: string): MxArray {
  const list = axes === undefined ? [...a.shape.keys()] : Array.isArray(axes) ? axes : [axes];
  return wrap(lib.mlxs_reduce(outPtr, op, a.handle, i32(list), list.length, keepdims ? 1 : 0), what);
}

// ---- construction ----

type HostData = HostTypedArray | number[];

/** An array from host data (copied). Plain number lists become float32 unless a dtype is given. */
export function array(data: HostData, shape?: number[], dtype?: DtypeCode): MxArray {
  let typed = data;
  let code = dtype;
  if (Array.isArray(data)) {
    code ??= Dtype.float32;
    typed = hostArrayFor(code, data);
  } else {
    code ??= dtypeOfTyped(data);
  }
  const dims = shape ?? [(typed as ArrayLike<unknown>).length];
  const expected = dims.reduce((x, y) => x * y, 1) * itemSize[dtypeName(code)];
  const view = typed as HostTypedArray;
  if (view.byteLength !== expected)
    throw new Error(`array: ${view.byteLength} bytes of data for shape [${dims}] of ${dtypeName(code)}`);
  return wrap(
    lib.mlxs_array_from_data(outPtr, view.byteLength > 0 ? view : new Uint8Array(1), i32(dims), dims.length, code),
    "array",
  );
}

function hostArrayFor(code: DtypeCode, values: number[]): HostTypedArray {
  switch (code) {
    case Dtype.float32:
      return Float32Array.from(values);
    case Dtype.int32:
      return Int32Array.from(values);
    case Dtype.uint32:
      return Uint32Array.from(values);
    case Dtype.int64:
      return BigInt64Array.from(values, BigInt);
    case Dtype.uint8:
    case Dtype.bool:
      return Uint8Array.from(values);
    default:
      return Float32Array.from(values);
  }
}

function dtypeOfTyped(data: HostTypedArray): DtypeCode {
  if (data instanceof Float32Array) return Dtype.float32;
  if (data instanceof Float64Array) return Dtype.float64;
  if (data instanceof Int32Array) return Dtype.int32;
  if (data instanceof Uint32Array) return Dtype.uint32;
  if (data instanceof Int16Array) return Dtype.int16;
  if (data instanceof Uint16Array) return Dtype.uint16;
  if (data instanceof Int8Array) return Dtype.int8;
  if (data instanceof BigInt64Array) return Dtype.int64;
  if (data instanceof BigUint64Array) return Dtype.uint64;
  return Dtype.uint8;
}

export function scalar(value: number, dtype: DtypeCode = Dtype.float32): MxArray {
  return wrap(lib.mlxs_array_from_scalar(outPtr, value, dtype), "scalar");
}

export function full(shape: number[], value: number, dtype: DtypeCode = Dtype.float32): MxArray {
  return wrap(lib.mlxs_full(outPtr, i32(shape), shape.length, value, dtype), "full");
}

export const zeros = (shape: number[], dtype: DtypeCode = Dtype.float32) => full(shape, 0, dtype);
export const ones = (shape: number[], dtype: DtypeCode = Dtype.float32) => full(shape, 1, dtype);

export function arange(start: number, stop: number, step = 1, dtype: DtypeCode = Dtype.int32): MxArray {
  return wrap(lib.mlxs_arange(outPtr, start, stop, step, dtype), "arange");
}

export function retain(a: MxArray): MxArray {
  return wrap(lib.mlxs_array_retain(outPtr, a.handle), "retain");
}

// ---- element-wise ----

export const abs = (a: MxArray) => unary(Unary.Abs, a, "abs");
export const negative = (a: MxArray) => unary(Unary.Negative, a, "negative");
export const exp = (a: MxArray) => unary(Unary.Exp, a, "exp");
export const log = (a: MxArray) => unary(Unary.Log, a, "log");
export const sqrt = (a: MxArray) => unary(Unary.Sqrt, a, "sqrt");
export const rsqrt = (a: MxArray) => unary(Unary.Rsqrt, a, "rsqrt");
export const sigmoid = (a: MxArray) => unary(Unary.Sigmoid, a, "sigmoid");
export const tanh = (a: MxArray) => unary(Unary.Tanh, a, "tanh");
export const sin = (a: MxArray) => unary(Unary.Sin, a, "sin");
export const cos = (a: MxArray) => unary(Unary.Cos, a, "cos");
export const floor = (a: MxArray) => unary(Unary.Floor, a, "floor");
export const ceil = (a: MxArray) => unary(Unary.Ceil, a, "ceil");
export const round = (a: MxArray) => unary(Unary.Round, a, "round");
export const logicalNot = (a: MxArray) => unary(Unary.LogicalNot, a, "logical_not");
export const copy = (a: MxArray) => unary(Unary.Copy, a, "copy");
export const square = (a: MxArray) => unary(Unary.Square, a, "square");
export const erf = (a: MxArray) => unary(Unary.Erf, a, "erf");
export const log1p = (a: MxArray) => unary(Unary.Log1p, a, "log1p");
export const contiguous = (a: MxArray) => unary(Unary.Contiguous, a, "contiguous");

export const add = (a: Operand, b: Operand) => binary(Binary.Add, a, b, "add");
export const subtract = (a: Operand, b: Operand) => binary(Binary.Subtract, a, b, "subtract");
export const multiply = (a: Operand, b: Operand) => binary(Binary.Multiply, a, b, "multiply");
export const divide = (a: Operand, b: Operand) => binary(Binary.Divide, a, b, "divide");
export const maximum = (a: Operand, b: Operand) => binary(Binary.Maximum, a, b, "maximum");
export const minimum = (a: Operand, b: Operand) => binary(Binary.Minimum, a, b, "minimum");
export const power = (a: Operand, b: Operand) => binary(Binary.Power, a, b, "power");
export const equal = (a: Operand, b: Operand) => binary(Binary.Equal, a, b, "equal");
export const notEqual = (a: Operand, b: Operand) => binary(Binary.NotEqual, a, b, "not_equal");
export const less = (a: Operand, b: Operand) => binary(Binary.Less, a, b, "less");
export const lessEqual = (a: Operand, b: Operand) => binary(Binary.LessEqual, a, b, "less_equal");
export const greater = (a: Operand, b: Operand) => binary(Binary.Greater, a, b, "greater");
export const greaterEqual = (a: Operand, b: Operand) => binary(Binary.GreaterEqual, a, b, "greater_equal");
export const logicalAnd = (a: Operand, b: Operand) => binary(Binary.LogicalAnd, a, b, "logical_and");
export const logicalOr = (a: Operand, b: Operand) => binary(Binary.LogicalOr, a, b, "logical_or");
export const remainder = (a: Operand, b: Operand) => binary(Binary.Remainder, a, b, "remainder");
export const floorDivide = (a: Operand, b: Operand) => binary(Binary.FloorDivide, a, b, "floor_divide");
export const matmul = (a: MxArray, b: MxArray) => binary(Binary.Matmul, a, b, "matmul");

/** SiLU, x * sigmoid(x), as mlx.nn.silu computes it. */
export const silu = (x: MxArray) => multiply(x, sigmoid(x));

export function where(cond: MxArray, x: MxArray, y: MxArray): MxArray {
  return wrap(lib.mlxs_where(outPtr, cond.handle, x.handle, y.handle), "where");
}

export function astype(a: MxArray, dtype: DtypeCode): MxArray {
  return wrap(lib.mlxs_astype(outPtr, a.handle, dtype), "astype");
}

/** The same bytes as another dtype, as mlx.core.view (uint8 [..., 4n] → uint32 [..., n]). */
export function view(a: MxArray, dtype: DtypeCode): MxArray {
  return wrap(lib.mlxs_view(outPtr, a.handle, dtype), "view");
}

// ---- reductions ----

export const sum = (a: MxArray, axes?: Axes, keepdims = false) => reduce(Reduce.Sum, a, axes, keepdims, "sum");
export const mean = (a: MxArray, axes?: Axes, keepdims = false) => reduce(Reduce.Mean, a, axes, keepdims, "mean");
export const max = (a: MxArray, axes?: Axes, keepdims = false) => reduce(Reduce.Max, a, axes, keepdims, "max");
export const min = (a: MxArray, axes?: Axes, keepdims = false) => reduce(Reduce.Min, a, axes, keepdims, "min");
export const prod = (a: MxArray, axes?: Axes, keepdims = false) => reduce(Reduce.Prod, a, axes, keepdims, "prod");
export const logsumexp = (a: MxArray, axes?: Axes, keepdims = false) =>
  reduce(Reduce.LogSumExp, a, axes, keepdims, "logsumexp");
export const all = (a: MxArray, axes?: Axes, keepdims = false) => reduce(Reduce.All, a, axes, keepdims, "all");
export const any = (a: MxArray, axes?: Axes, keepdims = false) => reduce(Reduce.Any, a, axes, keepdims, "any");
export const argmax = (a: MxArray, axis = -1, keepdims = false) => reduce(Reduce.ArgMax, a, axis, keepdims, "argmax");
export const argmin = (a: MxArray, axis = -1, keepdims = false) => reduce(Reduce.ArgMin, a, axis, keepdims, "argmin");

export function softmax(a: MxArray, axes: number | number[] = -1, precise = false): MxArray {
  const list = Array.isArray(axes) ? axes : [axes];
  return wrap(lib.mlxs_softmax(outPtr, a.handle, i32(list), list.length, precise ? 1 : 0), "softmax");
}

export function cumsum(a: MxArray, axis: number, { reverse = false, inclusive = true } = {}): MxArray {
  return wrap(lib.mlxs_cumsum(outPtr, a.handle, axis, reverse ? 1 : 0, inclusive ? 1 : 0), "cumsum");
}

export const sort = (a: MxArray, axis = -1) => wrap(lib.mlxs_sort(outPtr, a.handle, axis), "sort");
export const argsort = (a: MxArray, axis = -1) => wrap(lib.mlxs_argsort(outPtr, a.handle, axis), "argsort");
export const topk = (a: MxArray, k: number, axis = -1) => wrap(lib.mlxs_topk(outPtr, a.handle, k, axis), "topk");
export const argpartition = (a: MxArray, kth: number, axis = -1) =>
  wrap(lib.mlxs_argpartition(outPtr, a.handle, kth, axis), "argpartition");

// ---- shape ----

export function reshape(a: MxArray, shape: number[]): MxArray {
  return wrap(lib.mlxs_reshape(outPtr, a.handle, i32(shape), shape.length), "reshape");
}

export function transpose(a: MxArray, axes?: number[]): MxArray {
  const list = axes ?? [...a.shape.keys()].reverse();
  return wrap(lib.mlxs_transpose(outPtr, a.handle, i32(list), list.length), "transpose");
}

export function expandDims(a: MxArray, axes: number | number[]): MxArray {
  const list = Array.isArray(axes) ? axes : [axes];
  return wrap(lib.mlxs_expand_dims(outPtr, a.handle, i32(list), list.length), "expand_dims");
}

export function squeeze(a: MxArray, axes: number | number[] = []): MxArray {
  const list = Array.isArray(axes) ? axes : [axes];
  return wrap(lib.mlxs_squeeze(outPtr, a.handle, i32(list), list.length), "squeeze");
}

export function broadcastTo(a: MxArray, shape: number[]): MxArray {
  return wrap(lib.mlxs_broadcast_to(outPtr, a.handle, i32(shape), shape.length), "broadcast_to");
}

export function concatenate(arrays: MxArray[], axis = 0): MxArray {
  return wrap(lib.mlxs_concatenate(outPtr, handles(arrays), arrays.length, axis), "concatenate");
}

export function stack(arrays: MxArray[], axis = 0): MxArray {
  return wrap(lib.mlxs_stack(outPtr, handles(arrays), arrays.length, axis), "stack");
}

export function repeat(a: MxArray, repeats: number, axis: number): MxArray {
  return wrap(lib.mlxs_repeat(outPtr, a.handle, repeats, axis), "repeat");
}

// ---- indexing ----

/** a[start:stop:step] per axis; axes not listed are taken whole. Negative bounds count from the end. */
export function slice(a: MxArray, start: number[], stop: number[], strides?: number[]): MxArray {
  const [lo, hi, st] = fullBounds(a.shape, start, stop, strides);
  return wrap(lib.mlxs_slice(outPtr, a.handle, lo, hi, st, lo.length), "slice");
}

/** A copy of src with src[start:stop] = update; in place when nothing else holds src. */
export function sliceUpdate(
  src: MxArray,
  update: MxArray,
  start: number[],
  stop: number[],
  strides?: number[],
): MxArray {
  const [lo, hi, st] = fullBounds(src.shape, start, stop, strides);
  return wrap(lib.mlxs_slice_update(outPtr, src.handle, update.handle, lo, hi, st, lo.length), "slice_update");
}

function fullBounds(
  shape: number[],
  start: number[],
  stop: number[],
  strides?: number[],
): [Int32Array, Int32Array, Int32Array] {
  const n = shape.length;
  const lo = new Int32Array(n);
  const hi = Int32Array.from(shape);
  const st = new Int32Array(n).fill(1);
  for (let i = 0; i < start.length; i++) lo[i] = start[i]! < 0 ? shape[i]! + start[i]! : start[i]!;
  for (let i = 0; i < stop.length; i++) hi[i] = stop[i]! < 0 ? shape[i]! + stop[i]! : Math.min(stop[i]!, shape[i]!);
  if (strides) for (let i = 0; i < strides.length; i++) st[i] = strides[i]!;
  return [lo, hi, st];
}

export function take(a: MxArray, indices: MxArray, axis = 0): MxArray {
  return wrap(lib.mlxs_take(outPtr, a.handle, indices.handle, axis), "take");
}

export function takeAlongAxis(a: MxArray, indices: MxArray, axis: number): MxArray {
  return wrap(lib.mlxs_take_along_axis(outPtr, a.handle, indices.handle, axis), "take_along_axis");
}

export function putAlongAxis(a: MxArray, indices: MxArray, values: MxArray, axis: number): MxArray {
  return wrap(lib.mlxs_put_along_axis(outPtr, a.handle, indices.handle, values.handle, axis), "put_along_axis");
}

// ---- quantization ----

export interface QuantSpec {
  groupSize: number;
  bits: number;
  mode?: string;
}

export function quantizedMatmul(
  x: MxArray,
  w: MxArray,
  scales: MxArray,
  biases: MxArray | undefined,
  q: QuantSpec,
  transpose = true,
): MxArray {
  return wrap(
    lib.mlxs_quantized_matmul(
      outPtr,
      x.handle,
      w.handle,
      scales.handle,
      biases?.handle ?? null,
      transpose ? 1 : 0,
      q.groupSize,
      q.bits,
      cstr(q.mode ?? "affine"),
    ),
    "quantized_matmul",
  );
}

export function quantize(w: MxArray, q: QuantSpec): { weight: MxArray; scales: MxArray; biases?: MxArray } {
  check(
    lib.mlxs_quantize(outPtr, outPtr2, outPtr3, w.handle, q.groupSize, q.bits, cstr(q.mode ?? "affine")),
    "quantize",
  );
  const biasesHandle = readOut(2);
  return {
    weight: new MxArray(readOut(0)),
    scales: new MxArray(readOut(1)),
    biases: biasesHandle ? new MxArray(biasesHandle) : undefined,
  };
}

/** An affine-quantized weight: packed codes, scales and biases. */
export interface QuantizedArrays {
  weight: MxArray;
  scales: MxArray;
  biases: MxArray;
}

/** The weight, scales and biases a shim call wrote to the three out slots (undefined: no weight). */
function quantizedOut(status: number, what: string): QuantizedArrays | undefined {
  check(status, what);
  const weight = readOut(0);
  if (!weight) return undefined;
  return { weight: new MxArray(weight), scales: new MxArray(readOut(1)), biases: new MxArray(readOut(2)) };
}

/**
 * The weight (transposed, MLX's layout) repacked for our CPU kernels' decode rows, where they read
 * that layout on this CPU (ffi/src/kernels/quantized_matmul.h, kRepackColumns): the same bytes,
 * which only quantizedMatmul, the fused ops and takeQuantizedRows take (MLX's own ops refuse
 * them; unrepackQuantized puts them back). Undefined where the weight stays in MLX's layout.
 */
export function repackQuantized(t: QuantizedArrays, q: QuantSpec): QuantizedArrays | undefined {
  const { weight, scales, biases } = t;
  return quantizedOut(
    lib.mlxs_repack_quantized(
      outPtr,
      outPtr2,
      outPtr3,
      weight.handle,
      scales.handle,
      biases.handle,
      q.groupSize,
      q.bits,
    ),
    "repack_quantized",
  );
}

/** A weight repackQuantized made, back in MLX's layout (others as they are). */
export function unrepackQuantized(t: QuantizedArrays): QuantizedArrays {
  const { weight, scales, biases } = t;
  return quantizedOut(
    lib.mlxs_unrepack_quantized(outPtr, outPtr2, outPtr3, weight.handle, scales.handle, biases.handle),
    "unrepack_quantized",
  )!;
}

/** Rows `ids` (any shape) of a quantized weight, repacked or not, in MLX's layout [...ids, ·]: an embedding's lookup. */
export function takeQuantizedRows(t: QuantizedArrays, ids: MxArray): QuantizedArrays {
  const { weight, scales, biases } = t;
  return quantizedOut(
    lib.mlxs_take_quantized_rows(outPtr, outPtr2, outPtr3, weight.handle, scales.handle, biases.handle, ids.handle),
    "take_quantized_rows",
  )!;
}

export function dequantize(
  w: MxArray,
  scales: MxArray,
  biases: MxArray | undefined,
  q: QuantSpec,
  dtype?: DtypeCode,
): MxArray {
  return wrap(
    lib.mlxs_dequantize(
      outPtr,
      w.handle,
      scales.handle,
      biases?.handle ?? null,
      q.groupSize,
      q.bits,
      cstr(q.mode ?? "affine"),
      dtype ?? -1,
    ),
    "dequantize",
  );
}

// ---- evaluation ----

export function evaluate(...arrays: MxArray[]): void {
  check(lib.mlxs_eval(handles(arrays), arrays.length), "eval");
}

export function asyncEvaluate(...arrays: MxArray[]): void {
  check(lib.mlxs_async_eval(handles(arrays), arrays.length), "async_eval");
}

// ---- mixture of experts ----

export interface GatherOptions {
  /** Which matrix of `a`'s batch each product takes its left side from (default: in order). */
  lhsIndices?: MxArray;
  /** Which matrix of the stacked right side (an expert) each product uses. */
  rhsIndices?: MxArray;
  /** The indices are sorted, so MLX may group the rows of one expert. */
  sortedIndices?: boolean;
}

/** Batched matmuls with the right-hand matrix picked per product from a stack (experts). */
export function gatherMm(a: MxArray, b: MxArray, o: GatherOptions = {}): MxArray {
  return wrap(
    lib.mlxs_gather_mm(
      outPtr,
      a.handle,
      b.handle,
      o.lhsIndices?.handle ?? null,
      o.rhsIndices?.handle ?? null,
      o.sortedIndices ? 1 : 0,
    ),
    "gather_mm",
  );
}

/** gatherMm with a quantized stack of matrices: x · w[rhsIndices]ᵀ (transpose = true). */
export function gatherQmm(
  x: MxArray,
  w: MxArray,
  scales: MxArray,
  biases: MxArray | undefined,
  q: QuantSpec,
  o: GatherOptions = {},
  transpose = true,
): MxArray {
  return wrap(
    lib.mlxs_gather_qmm(
      outPtr,
      x.handle,
      w.handle,
      scales.handle,
      biases?.handle ?? null,
      o.lhsIndices?.handle ?? null,
      o.rhsIndices?.handle ?? null,
      transpose ? 1 : 0,
      q.groupSize,
      q.bits,
      cstr(q.mode ?? "affine"),
      o.sortedIndices ? 1 : 0,
    ),
    "gather_qmm",
  );
}
