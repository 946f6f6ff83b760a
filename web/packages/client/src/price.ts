/**
 * Exact price formats. Prices travel as decimal strings ("2.10"); every conversion here is
 * integer (BigInt) arithmetic on that string, so no binary-float drift can creep in.
 */
import type { DecimalString } from "./generated/protocol.js";

export type PriceFormat = "decimal" | "fractional" | "american";

/** A decimal string as an exact rational `num / den` (den a power of ten). */
export interface ExactDecimal {
  readonly num: bigint;
  readonly den: bigint;
}

const DECIMAL_RE = /^(\d+)(?:\.(\d+))?$/;

/** Parse a decimal string exactly; `undefined` when it is not a plain non-negative decimal. */
export function parseDecimal(text: string): ExactDecimal | undefined {
  const m = DECIMAL_RE.exec(text.trim());
  if (!m) return undefined;
  const whole = m[1] ?? "0";
  const frac = m[2] ?? "";
  return { num: BigInt(whole + frac), den: 10n ** BigInt(frac.length) };
}

function gcd(a: bigint, b: bigint): bigint {
  let x = a < 0n ? -a : a;
  let y = b < 0n ? -b : b;
  while (y !== 0n) [x, y] = [y, x % y];
  return x;
}

/** -1, 0 or 1 as `a` is below, equal to or above `b` (exactly: "2.10" equals "2.1"). */
export function compareDecimal(a: DecimalString, b: DecimalString): -1 | 0 | 1 {
  const x = parseDecimal(a);
  const y = parseDecimal(b);
  if (!x || !y) throw new RangeError(`not a decimal price: ${!x ? a : b}`);
  const l = x.num * y.den;
  const r = y.num * x.den;
  return l < r ? -1 : l > r ? 1 : 0;
}

/** Decimal odds exactly as the server sent them ("2.10" stays "2.10"). */
export function toDecimal(price: DecimalString): string {
  return price;
}

/**
 * Fractional (UK) odds: the profit per unit staked, `decimal - 1`, as a fully reduced
 * fraction: "2.50" -> "3/2", "1.01" -> "1/100", "3.333" -> "2333/1000", "2.00" -> "1/1".
 * `undefined` for a price that is not a decimal above 1.
 */
export function toFractional(price: DecimalString): string | undefined {
  const d = parseDecimal(price);
  if (!d || d.num <= d.den) return undefined;
  const num = d.num - d.den;
  const g = gcd(num, d.den);
  return `${num / g}/${d.den / g}`;
}

/**
 * American (moneyline) odds: "+N" profit on 100 staked when decimal >= 2, otherwise "-N"
 * stake needed to win 100. "2.50" -> "+150", "1.50" -> "-200", "2.00" -> "+100",
 * "1.01" -> "-10000". A non-integral result is rounded half away from zero to `places`
 * decimals (default 2), trailing zeros dropped: "3.333" -> "+233.3", "1.30" -> "-333.33".
 * `undefined` for a price that is not a decimal above 1.
 */
export function toAmerican(price: DecimalString, places = 2): string | undefined {
  const d = parseDecimal(price);
  if (!d || d.num <= d.den) return undefined;
  const profit = d.num - d.den; // (decimal - 1) = profit / den
  // Positive: 100 * profit / den. Negative: 100 * den / profit.
  const [sign, num, den] = d.num >= 2n * d.den ? ["+", 100n * profit, d.den] : ["-", 100n * d.den, profit];
  return sign + roundRational(num, den, places);
}

/** `num / den` (both positive) rounded half away from zero to `places` decimals, trimmed. */
function roundRational(num: bigint, den: bigint, places: number): string {
  const scale = 10n ** BigInt(places);
  const scaled = num * scale;
  let q = scaled / den;
  if ((scaled % den) * 2n >= den) q += 1n;
  const whole = q / scale;
  let frac = places > 0 ? (q % scale).toString().padStart(places, "0") : "";
  frac = frac.replace(/0+$/, "");
  return frac ? `${whole}.${frac}` : whole.toString();
}

/** The price in the chosen format; `fallback` (default "–") when there is no price. */
export function formatPrice(
  price: DecimalString | null | undefined,
  format: PriceFormat = "decimal",
  fallback = "–",
): string {
  if (price == null) return fallback;
  switch (format) {
    case "decimal":
      return toDecimal(price);
    case "fractional":
      return toFractional(price) ?? fallback;
    case "american":
      return toAmerican(price) ?? fallback;
  }
}
