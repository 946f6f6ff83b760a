import { describe, expect, it } from "vitest";
import { backoffCeiling, backoffDelay } from "../src/index.js";

describe("full-jitter backoff", () => {
  it("doubles the ceiling from the base up to the cap", () => {
    const opts = { baseMs: 500, capMs: 30_000 };
    expect([0, 1, 2, 3, 4, 5, 6, 7, 100, 5000].map((a) => backoffCeiling(a, opts))).toEqual([
      500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000,
    ]);
  });

  it("stays within [0, ceiling) for any random draw", () => {
    for (let attempt = 0; attempt < 40; attempt++) {
      const ceiling = backoffCeiling(attempt);
      expect(backoffDelay(attempt, {}, () => 0)).toBe(0);
      const top = backoffDelay(attempt, {}, () => 0.999999);
      expect(top).toBeLessThan(ceiling);
      expect(top).toBeGreaterThanOrEqual(ceiling * 0.99);
      for (let i = 0; i < 50; i++) {
        const d = backoffDelay(attempt);
        expect(d).toBeGreaterThanOrEqual(0);
        expect(d).toBeLessThan(ceiling);
        expect(Number.isInteger(d)).toBe(true);
      }
    }
  });
});
