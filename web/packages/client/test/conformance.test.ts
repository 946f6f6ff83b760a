/// <reference types="node" />
/**
 * The conformance corpus (tests/data/conformance, shared with `protocol.apply` in Python and
 * the plain board's script) against this SDK's book rules; docs/protocol.md, "Conformance
 * corpus", says how a runner reads it.
 */
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { applyDelta, canonicalText, checkSnapshot, checksum, fromSnapshot, type MarketBook, type wire } from "../src/index.js";

const CORPUS = new URL("../../../../tests/data/conformance/", import.meta.url);

interface Refusal {
  readonly at: number;
  readonly reason: string;
}

interface Case {
  readonly name: string;
  readonly messages: readonly (wire.Snapshot | wire.Delta)[];
  readonly refusals: readonly Refusal[];
  readonly book: wire.Snapshot | null;
}

interface Vector {
  readonly name: string;
  readonly book: wire.Snapshot;
  readonly text: string;
  readonly crc: number;
}

function load<T>(file: string, key: string): T[] {
  return (JSON.parse(readFileSync(new URL(file, CORPUS), "utf8")) as Record<string, T[]>)[key] ?? [];
}

const cases = load<Case>("cases.json", "cases");
const vectors = load<Vector>("checksums.json", "vectors");

/** Receive `messages` as the SDK does: the book after them and every refusal. */
function run(messages: Case["messages"]): { book: MarketBook | null; refusals: Refusal[] } {
  let book: MarketBook | null = null;
  const refusals: Refusal[] = [];
  messages.forEach((message, at) => {
    const result = message.type === "snapshot" ? checkSnapshot(message) : book && applyDelta(book, message);
    if (result === null) throw new Error(`case message ${at}: a delta before any snapshot`);
    if (result.ok) book = result.book;
    else refusals.push({ at, reason: result.reason });
  });
  return { book, refusals };
}

describe("conformance corpus", () => {
  it("has cases and vectors", () => {
    expect(cases.length).toBeGreaterThan(10);
    expect(vectors.length).toBeGreaterThan(0);
  });

  it.each(cases.map((c) => [c.name, c] as const))("%s", (_name, c) => {
    const { book, refusals } = run(c.messages);
    expect(refusals).toEqual(c.refusals);
    if (c.book === null) {
      expect(book).toBeNull();
      return;
    }
    expect(book).toEqual(fromSnapshot(c.book));
    if (c.book.crc != null && book !== null) expect(checksum(book)).toBe(c.book.crc);
  });

  it.each(vectors.map((v) => [v.name, v] as const))("checksum vector %s", (_name, v) => {
    const book = fromSnapshot(v.book);
    expect(canonicalText(book)).toBe(v.text);
    expect(checksum(book)).toBe(v.crc);
  });
});
