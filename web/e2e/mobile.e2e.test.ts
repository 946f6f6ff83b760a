/**
 * The mobile view in Chromium with phone emulation against a real `oddstream dev`: SSE by
 * choice, a service worker that caches the shell and never a price, each price's age, an
 * offline/online cycle after which every market continues with no gap (each delta the next
 * seq of its epoch, or a reset flagged as such) and agrees with the server, and no serious
 * or critical accessibility violation.
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import { devices, type Browser, type BrowserContext, type Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DIST, DevServer, launchBrowser, screenshotPath, seriousViolations, serveDist } from "./harness.js";

interface Entry {
  readonly m: string;
  readonly seq: number;
  readonly epoch: string;
  readonly cause: string;
}

interface RestSnapshot {
  seq: number;
  epoch: string;
  selections: { selection_id: string; price?: string | null }[];
}

let server: DevServer;
let browser: Browser;
let context: BrowserContext;
let page: Page;
let staticSite: { url: string; close: () => Promise<void> } | null = null;
const pageErrors: string[] = [];

/** The part of the page's SDK client (`window.oddstream.client`) the test reads. */
type PageClient = {
  state: string;
  transportKind: string;
  stats: { gaps: number };
  on: (t: string, f: (u: { book: { marketId: string; seq: number; epoch: string }; cause: string }) => void) => () => void;
};

async function state(p: Page): Promise<string> {
  return p.evaluate(() => (globalThis as unknown as { oddstream: { client: PageClient } }).oddstream.client.state);
}

async function shown(p: Page): Promise<{ marketId: string; seq: number; prices: Record<string, string> }[]> {
  return p.evaluate(() =>
    [...document.querySelectorAll<HTMLElement>(".market[data-market-id]")].map((m) => ({
      marketId: m.dataset["marketId"] ?? "",
      seq: Number(m.dataset["seq"]),
      prices: Object.fromEntries(
        [...m.querySelectorAll<HTMLElement>("li[data-selection-id]")].map((li) => [li.dataset["selectionId"] ?? "", li.dataset["price"] ?? ""]),
      ),
    })),
  );
}

/** Per market, what breaks continuity in the journal: a seq that is not the next one of its epoch, unflagged. */
function gaps(journal: readonly Entry[]): string[] {
  const last = new Map<string, Entry>();
  const found: string[] = [];
  for (const e of journal) {
    const before = last.get(e.m);
    last.set(e.m, e);
    if (!before || e.cause === "reset" || e.cause === "syncing") continue;
    if (e.epoch !== before.epoch) found.push(`${e.m}: epoch ${before.epoch} -> ${e.epoch} without a reset`);
    else if (e.cause === "delta" && e.seq !== before.seq + 1) found.push(`${e.m}: seq ${before.seq} -> ${e.seq}`);
    else if (e.cause === "snapshot" && e.seq > before.seq + 1) found.push(`${e.m}: snapshot ${before.seq} -> ${e.seq} without a reset`);
  }
  return found;
}

beforeAll(async () => {
  if (!existsSync(join(DIST, "mobile", "index.html"))) throw new Error("web/dist is not built: run `npm run build` in web/");
  server = await DevServer.start(0);
  browser = await launchBrowser();
  context = await browser.newContext({ ...devices["Pixel 7"] });
  page = await context.newPage();
  page.on("pageerror", (err) => pageErrors.push(err.message));
  page.setDefaultTimeout(30_000);
  const home = await fetch(`${server.url}/mobile/`, { signal: AbortSignal.timeout(5000) });
  let url = `${server.url}/mobile/`;
  if (!home.ok) {
    staticSite = await serveDist();
    url = `${staticSite.url}mobile/?gateway=${encodeURIComponent(`${server.url}/`)}`;
  }
  await page.goto(url);
  // The journal of every book change, from now on: market, seq, epoch and why.
  await page.evaluate(() => {
    const w = globalThis as unknown as { journal: Entry[]; oddstream: { client: PageClient } };
    w.journal = [];
    w.oddstream.client.on("book", (u) => w.journal.push({ m: u.book.marketId, seq: u.book.seq, epoch: u.book.epoch, cause: u.cause }));
  });
});

afterAll(async () => {
  await browser?.close();
  await server?.stop();
  await staticSite?.close();
});

describe("mobile view on SSE", () => {
  it("streams prices over SSE by choice, with their age, laid out for a phone", async () => {
    await expect.poll(() => state(page), { timeout: 20_000 }).toBe("open");
    expect(await page.evaluate(() => (globalThis as unknown as { oddstream: { client: PageClient } }).oddstream.client.transportKind)).toBe("sse");
    await expect.poll(async () => (await shown(page)).length, { timeout: 20_000 }).toBeGreaterThanOrEqual(3);
    await expect.poll(async () => (await page.locator("#conn").textContent()) ?? "").toBe("live · sse");
    // The synthetic feed stamps the wall clock: a price's age is seconds, read from its delta's ts.
    const ages = await page.locator("li[data-selection-id] .age").allTextContents();
    expect(ages.length).toBeGreaterThan(0);
    for (const a of ages) expect(a).toMatch(/^(now|\d+ s)$/);
    // Nothing wider than the phone.
    expect(await page.evaluate(() => document.documentElement.scrollWidth <= innerWidth)).toBe(true);
  });

  it("is installable: a manifest, and a service worker caching the shell only", async () => {
    const manifest = await page.evaluate(async () => {
      const link = document.querySelector<HTMLLinkElement>("link[rel=manifest]");
      return link ? ((await (await fetch(link.href)).json()) as { display: string; icons: unknown[]; start_url: string }) : null;
    });
    expect(manifest).toMatchObject({ display: "standalone", start_url: "./" });
    expect(manifest?.icons.length).toBeGreaterThan(0);
    const cached = await page.evaluate(async () => {
      const registration = await navigator.serviceWorker.ready;
      const keys = await caches.keys();
      const urls: string[] = [];
      for (const k of keys) for (const r of await (await caches.open(k)).keys()) urls.push(new URL(r.url).pathname);
      return { active: registration.active?.state ?? null, urls };
    });
    expect(cached.active).toBe("activated");
    expect(cached.urls).toEqual(expect.arrayContaining(["/mobile/", "/mobile/mobile.js", "/sdk/oddstream-client.js"]));
    expect(cached.urls.filter((u) => u.startsWith("/sse") || u.startsWith("/v1/") || u.startsWith("/ws"))).toEqual([]);
    await page.screenshot({ path: screenshotPath("05-mobile") });
  });

  it("goes offline and back online, resuming from Last-Event-ID with no gap", async () => {
    const before = await shown(page);
    const probe = before[0]?.marketId ?? "";
    await context.setOffline(true);
    await expect.poll(() => state(page), { timeout: 10_000, interval: 20 }).not.toBe("open");
    // The feed goes on while the phone is away: wait until the server is a few deltas ahead.
    const pageSeq = (await shown(page)).find((m) => m.marketId === probe)?.seq ?? 0;
    await expect
      .poll(async () => (await server.json<RestSnapshot>(`/v1/markets/${encodeURIComponent(probe)}`)).seq, { timeout: 60_000, interval: 100 })
      .toBeGreaterThan(pageSeq + 2);
    expect(await state(page)).not.toBe("open");
    await context.setOffline(false);
    await expect.poll(() => state(page), { timeout: 20_000 }).toBe("open");
    // Every market continues: the missed deltas in order (or a flagged reset), never a jump.
    const rest = await server.json<RestSnapshot>(`/v1/markets/${encodeURIComponent(probe)}`);
    await expect
      .poll(async () => (await shown(page)).find((m) => m.marketId === probe)?.seq ?? 0, { timeout: 20_000 })
      .toBeGreaterThanOrEqual(rest.seq);
    const journal = await page.evaluate(() => (globalThis as unknown as { journal: Entry[] }).journal);
    expect(journal.filter((e) => e.m === probe && e.seq > pageSeq).length).toBeGreaterThan(0);
    expect(gaps(journal)).toEqual([]);
    expect(await page.evaluate(() => (globalThis as unknown as { oddstream: { client: PageClient } }).oddstream.client.stats.gaps)).toBe(0);
    // And the screen agrees with the server, price for price, at the same seq.
    await expect
      .poll(async () => {
        const snap = await server.json<RestSnapshot>(`/v1/markets/${encodeURIComponent(probe)}`);
        const dom = (await shown(page)).find((m) => m.marketId === probe);
        const want = Object.fromEntries(snap.selections.map((s) => [s.selection_id, s.price ?? ""]));
        return dom?.seq === snap.seq && JSON.stringify(dom.prices) === JSON.stringify(want) ? "match" : `${dom?.seq} vs ${snap.seq}`;
      }, { timeout: 30_000, interval: 25 })
      .toBe("match");
  });

  it("has no serious or critical accessibility violation", async () => {
    expect(await seriousViolations(page)).toEqual([]);
    expect(pageErrors).toEqual([]);
  });
});
