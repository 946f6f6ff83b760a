import { describe, expect, it } from "vitest";
import { applyDelta, fromSnapshot, type wire } from "../src/index.js";
import { delta, snapshot } from "./fakes.js";

const book = fromSnapshot(snapshot("fb-1:1x2", 5) as unknown as wire.Snapshot);
const d = (s: number, extra: Record<string, unknown> = {}): wire.Delta =>
  delta("fb-1:1x2", s, extra) as unknown as wire.Delta;

describe("book rebuild", () => {
  it("applies exactly the next seq", () => {
    const r = applyDelta(book, d(6, { selections: [{ selection_id: "home", price: "2.05" }] }));
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(r.book.seq).toBe(6);
    expect(r.book.selections.map((s) => s.price)).toEqual(["2.05", "3.40", "3.60"]);
    expect(book.seq).toBe(5); // The input is untouched.
  });

  it.each([
    ["gap", d(7)],
    ["stale", d(5)],
    ["stale", d(1)],
    ["epoch", { ...d(6), epoch: "other" }],
    ["market", { ...d(6), market_id: "fb-2:1x2" }],
  ] as const)("refuses a %s delta", (reason, delta) => {
    expect(applyDelta(book, delta)).toEqual({ ok: false, reason });
  });

  it("takes the feed's redefinitions of name and main", () => {
    const r = applyDelta(book, d(6, { name: "Full-time result", main: false }));
    if (!r.ok) throw new Error("refused");
    expect(r.book).toMatchObject({ name: "Full-time result", main: false, seq: 6 });
    const r2 = applyDelta(r.book, d(7));
    if (!r2.ok) throw new Error("refused");
    expect(r2.book).toMatchObject({ name: "Full-time result", main: false });
  });

  it("merges status, reason, removals and new selections like protocol.apply", () => {
    const r1 = applyDelta(book, d(6, { status: "suspended", reason: "goal" }));
    if (!r1.ok) throw new Error("refused");
    expect(r1.book.status).toBe("suspended");
    expect(r1.book.reason).toBe("goal");
    const r2 = applyDelta(r1.book, d(7, {
      status: "open",
      reason: null,
      selections: [
        { selection_id: "draw", price: null, status: "removed" },
        { selection_id: "other", name: "Other", price: "9.00" },
        { selection_id: "nameless", price: "12" },
      ],
    }));
    if (!r2.ok) throw new Error("refused");
    expect(r2.book.status).toBe("open");
    expect(r2.book.reason).toBeNull();
    expect(r2.book.selections.map(({ selectionId, name, price, status }) => ({ selectionId, name, price, status }))).toEqual([
      { selectionId: "home", name: "Home", price: "2.10", status: "active" },
      { selectionId: "draw", name: "Draw", price: null, status: "removed" },
      { selectionId: "away", name: "Away", price: "3.60", status: "active" },
      { selectionId: "other", name: "Other", price: "9.00", status: "active" },
      { selectionId: "nameless", name: "nameless", price: "12", status: "active" },
    ]);
  });

  it("merges exchange fields: absent keeps, null clears, ladders replace whole", () => {
    const r1 = applyDelta(book, d(6, {
      volume: "1520.50",
      selections: [
        { selection_id: "home", back: [["2.08", "120"], ["2.06", "300.5"]], lay: [["2.12", "80"]], ltp: "2.10", volume: "900" },
      ],
    }));
    if (!r1.ok) throw new Error("refused");
    const home1 = r1.book.selections[0]!;
    expect(r1.book.volume).toBe("1520.50");
    expect(home1.back).toEqual([["2.08", "120"], ["2.06", "300.5"]]);
    expect(home1.ltp).toBe("2.10");
    const r2 = applyDelta(r1.book, d(7, {
      selections: [{ selection_id: "home", back: [["2.04", "50"]], ltp: null, status: "removed", adjustment: "12.5", removed_at: 1700000000000 }],
    }));
    if (!r2.ok) throw new Error("refused");
    const home2 = r2.book.selections[0]!;
    expect(home2.back).toEqual([["2.04", "50"]]);
    expect(home2.lay).toEqual([["2.12", "80"]]);
    expect(home2.ltp).toBeNull();
    expect(home2.volume).toBe("900");
    expect(home2.adjustment).toBe("12.5");
    expect(home2.removedAt).toBe(1700000000000);
    expect(r2.book.volume).toBe("1520.50");
  });
});
