/**
 * The board's exchange ladder against real Betfair recordings replayed by `oddstream dev`:
 * a greyhound win market at 5x (live ladders, then suspended, closed and settled) and a
 * horse win market at full speed (removed runners with their adjustment factors). The ladder
 * agrees with the server level for level at the same seq, redraws only the runners whose
 * data changed, is operated with the keyboard (a back price onto the slip, the slip's own
 * buttons), announces suspensions politely, and has no serious or critical accessibility
 * violation.
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import type { Browser, Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DIST, DevServer, REPO, launchBrowser, screenshotPath, seriousViolations, serveDist } from "./harness.js";

const RECORDINGS = join(REPO, "tests", "data", "feeds", "betfair");
const GREYHOUNDS = `betfair:${join(RECORDINGS, "flumine_1.197931750_greyhound_win.jsonl")}`;
const HORSES = `betfair:${join(RECORDINGS, "bflw_BASIC-1.132153978_horse_win_basic.jsonl")}`;
const MARKET = "1.197931750";

type Level = [string, string];
interface RestSnapshot {
  seq: number;
  status: string;
  selections: { selection_id: string; status?: string; back?: Level[]; lay?: Level[]; ltp?: string | null; adjustment?: string | null }[];
}
interface DomRunner {
  id: string;
  status: string;
  back: Level[];
  lay: Level[];
  ltp: string;
  note: string;
}
interface DomLadder {
  seq: number;
  status: string;
  state: string;
  runners: DomRunner[];
}

let server: DevServer;
let browser: Browser;
let page: Page;
let staticSite: { url: string; close: () => Promise<void> } | null = null;
const pageErrors: string[] = [];

async function open(feed: string, sports: string): Promise<void> {
  await server?.stop();
  server = await DevServer.start(0, ["--feed", feed, "--speed", feed === GREYHOUNDS ? "5" : "0"]);
  const home = await (await fetch(`${server.url}/`, { signal: AbortSignal.timeout(5000) })).text();
  let url = `${server.url}/?sports=${sports}`;
  if (!home.includes("<oddstream-board")) {
    staticSite ??= await serveDist();
    url = `${staticSite.url}?sports=${sports}&gateway=${encodeURIComponent(`${server.url}/`)}`;
  }
  await page.goto(url);
}

async function ladder(p: Page, marketId: string): Promise<DomLadder | null> {
  return p.evaluate((id) => {
    const root = document.querySelector("oddstream-board")?.shadowRoot;
    const el = root?.querySelector<HTMLElement>(`.ladder[data-market-id="${id}"]`);
    if (!el) return null;
    const levels = (row: Element, side: string): [string, string][] =>
      [...row.querySelectorAll<HTMLElement>(`td.cell.${side}`)]
        .filter((c) => c.dataset["price"])
        .map((c) => [c.dataset["price"] ?? "", c.dataset["size"] ?? ""] as [string, string]);
    return {
      seq: Number(el.dataset["seq"]),
      status: el.dataset["status"] ?? "",
      state: el.querySelector("[data-testid=market-state]")?.textContent ?? "",
      runners: [...el.querySelectorAll<HTMLElement>("tr[data-selection-id]")].map((row) => ({
        id: row.dataset["selectionId"] ?? "",
        status: row.dataset["status"] ?? "",
        // Back cells are drawn worst to best (best nearest the middle): best first here.
        back: levels(row, "back").reverse(),
        lay: levels(row, "lay"),
        ltp: row.querySelector<HTMLElement>("td.ltp")?.dataset["ltp"] ?? "",
        note: row.querySelector(".note")?.textContent ?? "",
      })),
    };
  }, marketId);
}

/** The ladder and REST agree level for level at the same seq ("match"). */
async function agrees(marketId: string): Promise<string> {
  const dom = await ladder(page, marketId);
  const rest = await server.json<RestSnapshot>(`/v1/markets/${encodeURIComponent(marketId)}`);
  if (!dom) return "no ladder";
  if (dom.seq !== rest.seq) return `seq ${dom.seq} != ${rest.seq}`;
  const want = rest.selections.map((s) => ({
    id: s.selection_id,
    back: s.status === "removed" ? [] : (s.back ?? []),
    lay: s.status === "removed" ? [] : (s.lay ?? []),
    ltp: s.ltp ?? "",
  }));
  const got = dom.runners.map(({ id, back, lay, ltp }) => ({ id, back, lay, ltp }));
  return JSON.stringify(got) === JSON.stringify(want) && dom.status === rest.status ? "match" : `${JSON.stringify(got)} != ${JSON.stringify(want)}`;
}

beforeAll(async () => {
  if (!existsSync(join(DIST, "index.html"))) throw new Error("web/dist is not built: run `npm run build` in web/");
  browser = await launchBrowser();
  page = await browser.newPage({ viewport: { width: 1360, height: 900 } });
  page.on("pageerror", (err) => pageErrors.push(err.message));
  page.setDefaultTimeout(30_000);
  await open(GREYHOUNDS, "greyhounds");
});

afterAll(async () => {
  await browser?.close();
  await server?.stop();
  await staticSite?.close();
});

describe("exchange ladder on the board (Betfair recordings)", () => {
  it("draws three levels of back and lay with sizes, LTP and volume, equal to the server's", async () => {
    await expect.poll(async () => (await ladder(page, MARKET))?.runners.length ?? 0, { timeout: 30_000 }).toBe(6);
    await expect
      .poll(async () => (await ladder(page, MARKET))?.runners.filter((r) => r.back.length === 3 && r.lay.length > 0).length ?? 0, { timeout: 20_000 })
      .toBeGreaterThan(0);
    await expect.poll(() => agrees(MARKET), { timeout: 20_000, interval: 25 }).toBe("match");
    await page.screenshot({ path: screenshotPath("06-ladder") });
  });

  it("redraws only the runners whose data changed", async () => {
    // Which rows the DOM touched, against which selections the deltas changed, over a while.
    const seen = await page.evaluate(
      (id) =>
        new Promise<{ touched: string[]; changed: string[]; deltas: number }>((resolve) => {
          const root = document.querySelector("oddstream-board")?.shadowRoot;
          const table = root?.querySelector(`.ladder[data-market-id="${id}"]`);
          const client = (globalThis as unknown as { oddstream: { client: { on: (t: string, f: (u: { book: { marketId: string; selections: unknown[] }; previous?: { selections: unknown[] }; cause: string }) => void) => () => void } } }).oddstream.client;
          const touched = new Set<string>();
          const changed = new Set<string>();
          let deltas = 0;
          const observer = new MutationObserver((records) => {
            for (const r of records) {
              const node = r.target instanceof Element ? r.target : r.target.parentElement;
              const row = node?.closest<HTMLElement>("tr[data-selection-id]");
              if (row) touched.add(row.dataset["selectionId"] ?? "");
            }
          });
          const off = client.on("book", (u) => {
            if (u.book.marketId !== id || u.cause !== "delta" || !u.previous) return;
            deltas += 1;
            const before = new Set(u.previous.selections);
            for (const s of u.book.selections) if (!before.has(s)) changed.add((s as { selectionId: string }).selectionId);
          });
          // Depth bars' widths (style) are left out: they follow the market-wide scale.
          const attributeFilter = ["data-price", "data-size", "data-ltp", "data-status", "data-move", "disabled"];
          if (table) observer.observe(table, { subtree: true, childList: true, characterData: true, attributeFilter });
          setTimeout(() => {
            observer.disconnect();
            off();
            resolve({ touched: [...touched], changed: [...changed], deltas });
          }, 3000);
        }),
      MARKET,
    );
    expect(seen.deltas).toBeGreaterThan(0);
    expect(seen.touched.length).toBeGreaterThan(0);
    // A row is redrawn only when its runner changed (a move arrow fading is part of that change).
    expect(seen.touched.filter((s) => !seen.changed.includes(s))).toEqual([]);
  });

  it("is operated with the keyboard: a back price onto the slip, then the slip's own buttons", async () => {
    const back = page.locator(`oddstream-board .ladder[data-market-id="${MARKET}"] td.cell.back.best button:not([disabled])`).first();
    const selectionId = await back.evaluate((b) => b.closest<HTMLElement>("tr")?.dataset["selectionId"] ?? "");
    await back.focus();
    await page.keyboard.press("Enter");
    const item = page.locator(`oddstream-betslip li.item[data-market-id="${MARKET}"][data-selection-id="${selectionId}"]`);
    await item.waitFor({ timeout: 10_000 });
    // Every control of the slip item is reachable with Tab and is a real button.
    const buttons = item.locator("button");
    expect(await buttons.count()).toBeGreaterThan(0);
    const focusable = await buttons.evaluateAll((list) => list.every((b) => (b as HTMLButtonElement).tabIndex >= 0));
    expect(focusable).toBe(true);
    const remove = item.locator("button.remove");
    if ((await remove.count()) > 0) {
      await remove.focus();
      await page.keyboard.press("Enter");
      await item.waitFor({ state: "detached", timeout: 10_000 });
    }
  });

  it("shows the suspension in words and announces it, then closes and settles", async () => {
    await expect.poll(async () => (await ladder(page, MARKET))?.state ?? "", { timeout: 60_000, interval: 50 }).toMatch(/^Suspended/);
    expect(await page.locator(`oddstream-board .ladder[data-market-id="${MARKET}"] button:not([disabled])`).count()).toBe(0);
    await expect
      .poll(async () => (await page.locator("oddstream-board [data-testid=announcer]").textContent()) ?? "", { timeout: 15_000 })
      .toMatch(/suspended/i);
    expect(await page.locator("oddstream-board [data-testid=announcer]").getAttribute("aria-live")).toBe("polite");
    await expect.poll(async () => (await ladder(page, MARKET))?.state ?? "", { timeout: 60_000, interval: 100 }).toBe("Settled");
    const settled = await ladder(page, MARKET);
    expect(settled?.runners.filter((r) => r.note === "Winner").length).toBe(1);
    await expect.poll(() => agrees(MARKET), { timeout: 10_000, interval: 25 }).toBe("match");
  });

  it("has no serious or critical accessibility violation", async () => {
    expect(await seriousViolations(page)).toEqual([]);
  });

  it("shows removed runners with their adjustment factor", async () => {
    await open(HORSES, "horse_racing");
    const market = "1.132153978";
    await expect.poll(async () => (await ladder(page, market))?.state ?? "", { timeout: 60_000 }).toMatch(/Settled|Closed/);
    const removed = (await ladder(page, market))?.runners.filter((r) => r.status === "removed") ?? [];
    expect(removed.map((r) => r.note).sort()).toEqual(["Removed · adj. 5.55%", "Removed · adj. 7.14%"]);
    await expect.poll(() => agrees(market), { timeout: 10_000, interval: 25 }).toBe("match");
    await page.screenshot({ path: screenshotPath("07-ladder-removed"), fullPage: true });
    expect(await seriousViolations(page)).toEqual([]);
    expect(pageErrors).toEqual([]);
  });
});
