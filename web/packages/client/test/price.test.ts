import { describe, expect, it } from "vitest";
import { compareDecimal, formatPrice, parseDecimal, toAmerican, toFractional } from "../src/index.js";

describe("price formats", () => {
  it.each([
    ["2.50", "3/2", "+150"],
    ["1.50", "1/2", "-200"],
    ["2.00", "1/1", "+100"],
    ["2", "1/1", "+100"],
    ["1.01", "1/100", "-10000"],
    ["1000", "999/1", "+99900"],
    ["3.333", "2333/1000", "+233.3"],
    ["1.30", "3/10", "-333.33"],
    ["1.333", "333/1000", "-300.3"],
    ["4.20", "16/5", "+320"],
    ["1.91", "91/100", "-109.89"],
    ["11.0", "10/1", "+1000"],
    ["1.001", "1/1000", "-100000"],
    ["2.10", "11/10", "+110"],
    ["1.83", "83/100", "-120.48"],
    ["0.1", undefined, undefined],
    ["1.00", undefined, undefined],
    ["abc", undefined, undefined],
    ["-2.0", undefined, undefined],
  ])("%s -> fractional %s, american %s", (price, fractional, american) => {
    expect(toFractional(price)).toBe(fractional);
    expect(toAmerican(price)).toBe(american);
  });

  it("keeps the decimal string exactly as sent", () => {
    expect(formatPrice("2.10")).toBe("2.10");
    expect(formatPrice("1000", "decimal")).toBe("1000");
    expect(formatPrice(null)).toBe("–");
    expect(formatPrice("2.50", "fractional")).toBe("3/2");
    expect(formatPrice("1.50", "american")).toBe("-200");
  });

  it("rounds American odds half away from zero at the chosen places", () => {
    expect(toAmerican("1.30", 0)).toBe("-333");
    expect(toAmerican("3.335", 0)).toBe("+234"); // 233.5 -> 234
    expect(toAmerican("1.003", 1)).toBe("-33333.3");
  });

  it("parses exactly and compares without floats", () => {
    expect(parseDecimal("0.30")).toEqual({ num: 30n, den: 100n });
    // 0.1 + 0.2 style drift cannot happen: 1.3 vs 1.30 are equal, 1.3 < 1.31.
    expect(compareDecimal("1.3", "1.30")).toBe(0);
    expect(compareDecimal("1.3", "1.31")).toBe(-1);
    expect(compareDecimal("1000", "999.999999999999999")).toBe(1);
    expect(() => compareDecimal("x", "1")).toThrow(RangeError);
  });
});
