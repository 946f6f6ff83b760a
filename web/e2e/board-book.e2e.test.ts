/**
 * The conformance corpus (tests/data/conformance, shared with `protocol.apply` and the SDK's
 * book.ts) against the plain board's own book rules, in Chromium: the page
 * (server/static/index.html, served as it is) exposes its pure book functions as
 * `window.oddstreamBook`, and the cases run inside the page.
 */
import { readFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import type { Browser, Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { REPO, launchBrowser } from "./harness.js";

type Json = Record<string, unknown>;
interface Case {
  readonly name: string;
  readonly messages: readonly Json[];
  readonly refusals: readonly { at: number; reason: string }[];
  readonly book: Json | null;
}
interface Vector {
  readonly name: string;
  readonly book: Json;
  readonly text: string;
  readonly crc: number;
}
interface Outcome {
  readonly refusals: { at: number; reason: string }[];
  readonly book: Json | null;
  readonly expected: Json | string | null;
  readonly checksum: number | null;
}

const CORPUS = join(REPO, "tests", "data", "conformance");
const load = <T>(file: string, key: string): T[] =>
  (JSON.parse(readFileSync(join(CORPUS, file), "utf8")) as Record<string, T[]>)[key] ?? [];
const cases = load<Case>("cases.json", "cases");
const vectors = load<Vector>("checksums.json", "vectors");
const PAGE = readFileSync(join(REPO, "server", "static", "index.html"));

let server: Server;
let browser: Browser;
let page: Page;
const pageErrors: string[] = [];

beforeAll(async () => {
  // The page alone: its WebSocket finds no gateway here and retries with backoff, which
  // leaves the book functions alone.
  server = createServer((req, res) => {
    const found = req.url === "/";
    res.writeHead(found ? 200 : 404, { "content-type": found ? "text/html; charset=utf-8" : "text/plain" });
    res.end(found ? PAGE : "not found");
  });
  await new Promise<void>((ok) => server.listen(0, "127.0.0.1", ok));
  browser = await launchBrowser();
  page = await browser.newPage();
  page.on("pageerror", (err) => pageErrors.push(err.message));
  await page.goto(`http://127.0.0.1:${(server.address() as AddressInfo).port}/`);
  await page.waitForFunction(() => "oddstreamBook" in window, undefined, { timeout: 10_000 });
});

afterAll(async () => {
  await browser?.close();
  await new Promise((ok) => server?.close(ok));
});

/** Runs one case in the page, as the page receives messages. */
async function run(c: Case): Promise<Outcome> {
  return page.evaluate((c) => {
    interface Rules {
      checkSnapshot(s: unknown): Json | string;
      nextBook(b: Json, d: unknown): Json | string;
      checksum(b: Json): number;
    }
    const rules = (window as unknown as { oddstreamBook: Rules }).oddstreamBook;
    const plain = (b: Json | string | null): Json | string | null => {
      if (b === null || typeof b === "string") return b;
      const { stale: _s, healing: _h, ...rest } = b;
      return rest;
    };
    let book: Json | null = null;
    const refusals: { at: number; reason: string }[] = [];
    c.messages.forEach((m, at) => {
      const next = m["type"] === "snapshot" ? rules.checkSnapshot(m) : book && rules.nextBook(book, m);
      if (next === null) throw new Error(`message ${at}: a delta before any snapshot`);
      if (typeof next === "string") refusals.push({ at, reason: next });
      else book = next;
    });
    const expected = c.book === null ? null : rules.checkSnapshot({ ...c.book, crc: undefined });
    return { refusals, book: plain(book) as Json | null, expected: plain(expected), checksum: book && rules.checksum(book) };
  }, c);
}

describe("plain board: conformance corpus", () => {
  it("has cases", () => {
    expect(cases.length).toBeGreaterThan(10);
  });

  it.each(cases.map((c) => [c.name, c] as const))("%s", async (_name, c) => {
    const out = await run(c);
    expect(out.refusals).toEqual(c.refusals);
    expect(out.book).toEqual(out.expected);
    if (c.book?.["crc"] != null) expect(out.checksum).toBe(c.book["crc"]);
    expect(pageErrors).toEqual([]);
  });

  it.each(vectors.map((v) => [v.name, v] as const))("checksum vector %s", async (_name, v) => {
    const got = await page.evaluate((book) => {
      const rules = (window as unknown as { oddstreamBook: { checkSnapshot(s: unknown): Json; canonicalText(b: Json): string; checksum(b: Json): number } }).oddstreamBook;
      const b = rules.checkSnapshot(book);
      return { text: rules.canonicalText(b), crc: rules.checksum(b) };
    }, v.book);
    expect(got).toEqual({ text: v.text, crc: v.crc });
  });
});
