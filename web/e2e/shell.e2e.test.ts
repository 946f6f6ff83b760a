/**
 * The shell in a real browser against a real `oddstream dev`: the React board and the
 * Angular bet slip share one connection, follow live prices, survive a server restart
 * (drain -> reconnect -> resume on a new process, same port) with prices equal to the
 * server's, and both show a suspension.
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import type { Browser, Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DIST, DevServer, launchBrowser, screenshotPath, seriousViolations, serveDist } from "./harness.js";

interface RestSnapshot {
  market_id: string;
  seq: number;
  epoch: string;
  status: string;
  selections: { selection_id: string; price?: string | null }[];
}

interface DomMarket {
  marketId: string;
  seq: number;
  epoch: string;
  status: string;
  prices: Record<string, string>;
}

interface SlipItem {
  marketId: string;
  selectionId: string;
  price: string;
  accepted: string;
  state: string;
  text: string;
  acceptEnabled: boolean;
}

const DEV_ARGS = ["--drain-s", "2"];
let server: DevServer;
let browser: Browser;
let page: Page;
let staticSite: { url: string; close: () => Promise<void> } | null = null;
const pageErrors: string[] = [];

async function boardMarkets(p: Page): Promise<DomMarket[]> {
  return p.evaluate(() => {
    const root = document.querySelector("oddstream-board")?.shadowRoot;
    return [...(root?.querySelectorAll<HTMLElement>("[data-market-id]") ?? [])].map((m) => ({
      marketId: m.dataset["marketId"] ?? "",
      seq: Number(m.dataset["seq"]),
      epoch: m.dataset["epoch"] ?? "",
      status: m.dataset["status"] ?? "",
      prices: Object.fromEntries(
        [...m.querySelectorAll<HTMLElement>("[data-selection-id]")].map((s) => [s.dataset["selectionId"] ?? "", s.dataset["price"] ?? ""]),
      ),
    }));
  });
}

async function slipItems(p: Page): Promise<SlipItem[]> {
  return p.evaluate(() => {
    const root = document.querySelector("oddstream-betslip")?.shadowRoot;
    return [...(root?.querySelectorAll<HTMLElement>("li.item") ?? [])].map((li) => ({
      marketId: li.dataset["marketId"] ?? "",
      selectionId: li.dataset["selectionId"] ?? "",
      price: li.dataset["price"] ?? "",
      accepted: li.dataset["accepted"] ?? "",
      state: li.dataset["state"] ?? "",
      text: li.textContent ?? "",
      acceptEnabled: [...li.querySelectorAll<HTMLButtonElement>("button.accept")].some((b) => !b.disabled),
    }));
  });
}

async function connectionState(p: Page): Promise<string> {
  return p.evaluate(() => document.getElementById("conn")?.dataset["state"] ?? "");
}

/** Board and REST agree on a market's prices at the same seq and epoch ("match"). */
async function agreesWithServer(marketId: string): Promise<string> {
  const dom = (await boardMarkets(page)).find((m) => m.marketId === marketId);
  const rest = await server.json<RestSnapshot>(`/v1/markets/${encodeURIComponent(marketId)}`);
  if (!dom) return "not on the board";
  if (dom.epoch !== rest.epoch) return `epoch ${dom.epoch} != ${rest.epoch}`;
  if (dom.seq !== rest.seq) return `seq ${dom.seq} != ${rest.seq}`; // moved between the reads: retry
  const want = Object.fromEntries(rest.selections.map((s) => [s.selection_id, s.price ?? ""]));
  return JSON.stringify(dom.prices) === JSON.stringify(want) && dom.status === rest.status
    ? "match"
    : `prices ${JSON.stringify(dom.prices)} != ${JSON.stringify(want)}`;
}

beforeAll(async () => {
  if (!existsSync(join(DIST, "index.html"))) throw new Error("web/dist is not built: run `npm run build` in web/");
  server = await DevServer.start(0, DEV_ARGS);
  browser = await launchBrowser();
  page = await browser.newPage({ viewport: { width: 1360, height: 1000 } });
  page.on("pageerror", (err) => pageErrors.push(err.message));
  page.setDefaultTimeout(30_000);
  // The dev command serves the shell at `/` once it mounts web/dist; until then serve it here.
  const home = await (await fetch(`${server.url}/`, { signal: AbortSignal.timeout(5000) })).text();
  let shellUrl = `${server.url}/`;
  if (!home.includes("<oddstream-board")) {
    staticSite = await serveDist();
    shellUrl = `${staticSite.url}?gateway=${encodeURIComponent(`${server.url}/`)}`;
  }
  await page.goto(shellUrl);
});

afterAll(async () => {
  await browser?.close();
  await server?.stop();
  await staticSite?.close();
});

describe("shell: React board + Angular bet slip on one connection", () => {
  it("shows live prices that change, with flashes", async () => {
    await expect.poll(() => connectionState(page), { timeout: 20_000 }).toBe("open");
    await expect.poll(async () => (await boardMarkets(page)).length, { timeout: 20_000 }).toBeGreaterThanOrEqual(6);
    const first = new Map((await boardMarkets(page)).map((m) => [m.marketId, JSON.stringify(m.prices)]));
    await expect
      .poll(async () => (await boardMarkets(page)).filter((m) => first.has(m.marketId) && first.get(m.marketId) !== JSON.stringify(m.prices)).length, { timeout: 30_000 })
      .toBeGreaterThan(0);
    await page.locator("oddstream-board [data-flash='up'], oddstream-board [data-flash='down']").first().waitFor({ timeout: 30_000 });
    // One shared connection: the shell's client is the only socket (board and slip hold none).
    expect(await page.evaluate(() => (globalThis as unknown as { oddstream: { client: { transportKind: string } } }).oddstream.client.transportKind)).toBe("websocket");
    await page.screenshot({ path: screenshotPath("01-board-live") });
  });

  it("adds a selection to the bet slip, whose price follows the board's", async () => {
    const button = page.locator("oddstream-board .market[data-status='open'] button[data-selection-id]:not([disabled])").first();
    const marketId = await button.evaluate((b) => b.closest<HTMLElement>("[data-market-id]")?.dataset["marketId"] ?? "");
    const selectionId = (await button.getAttribute("data-selection-id")) ?? "";
    await button.click();
    const item = page.locator(`oddstream-betslip li.item[data-market-id="${marketId}"][data-selection-id="${selectionId}"]`);
    await item.waitFor();
    const picked = (await item.getAttribute("data-accepted")) ?? "";
    // Board and slip show the same live price, and it moves on from the picked one.
    const sample = async (): Promise<string> => {
      const board = (await boardMarkets(page)).find((m) => m.marketId === marketId)?.prices[selectionId];
      const slip = (await slipItems(page)).find((s) => s.marketId === marketId && s.selectionId === selectionId)?.price;
      return board === slip ? (board === picked ? "same" : "moved") : `board ${board} slip ${slip}`;
    };
    await expect.poll(sample, { timeout: 60_000, interval: 50 }).toBe("moved");
    // The slip shows old -> new with Accept/Reject; accepting takes the new price.
    await expect.poll(async () => (await slipItems(page))[0]?.state, { timeout: 10_000 }).toMatch(/changed|blocked/);
    await page.screenshot({ path: screenshotPath("02-betslip-price-change") });
    const accept = item.locator("button.accept:not([disabled])");
    if ((await accept.count()) > 0) {
      await accept.click();
      await expect.poll(async () => (await slipItems(page))[0]?.accepted, { timeout: 5_000 }).not.toBe(picked);
    }
  });

  it("recovers both micro-frontends to the server's prices after a restart on the same port", async () => {
    const port = server.port;
    const before = server;
    const stopping = before.stop();
    await expect.poll(() => connectionState(page), { timeout: 15_000, interval: 20 }).not.toBe("open");
    expect(await stopping).toBe(0); // drained and exited cleanly
    server = await DevServer.start(port, DEV_ARGS);
    await expect.poll(() => connectionState(page), { timeout: 45_000 }).toBe("open");
    const markets = (await boardMarkets(page)).map((m) => m.marketId);
    // Every board market is on the new server's epoch, and a sample agrees price for price.
    await expect
      .poll(async () => {
        // Markets appear on the new server as its feed creates them: ask each time.
        const epochs = new Set((await server.json<RestSnapshot[]>("/v1/markets")).map((m) => m.epoch));
        return (await boardMarkets(page)).filter((m) => !epochs.has(m.epoch)).map((m) => `${m.marketId}@${m.epoch}`);
      }, { timeout: 20_000 })
      .toEqual([]);
    const slipMarket = (await slipItems(page))[0]?.marketId;
    const sample = [...new Set([slipMarket, ...markets.slice(0, 4)].filter((m): m is string => !!m))];
    for (const marketId of sample) {
      await expect.poll(() => agreesWithServer(marketId), { timeout: 30_000, interval: 25 }).toBe("match");
    }
    // The slip follows the same (new) book as the board.
    await expect
      .poll(async () => {
        const s = (await slipItems(page))[0];
        const b = (await boardMarkets(page)).find((m) => m.marketId === s?.marketId);
        return s && b ? b.prices[s.selectionId] === s.price : false;
      }, { timeout: 20_000, interval: 50 })
      .toBe(true);
    await page.screenshot({ path: screenshotPath("03-after-restart") });
  });

  it("shows a suspension on the board and blocks it in the bet slip", async () => {
    // Put every main market's first selection on the slip, through the page's shared bus.
    await page.evaluate(() => {
      const root = document.querySelector("oddstream-board")?.shadowRoot;
      for (const m of root?.querySelectorAll<HTMLElement>("[data-market-id]") ?? []) {
        const sel = m.querySelector<HTMLElement>("[data-selection-id]");
        if (!sel) continue;
        dispatchEvent(
          new CustomEvent("oddstream:selection-picked", {
            detail: {
              marketId: m.dataset["marketId"],
              selectionId: sel.dataset["selectionId"],
              price: sel.dataset["price"] || null,
              label: sel.title.split(" @ ")[0],
              marketName: "Main market",
              eventName: m.closest<HTMLElement>("[data-event-id]")?.dataset["eventId"] ?? "",
            },
          }),
        );
      }
    });
    const slipMarkets = new Set((await slipItems(page)).map((s) => s.marketId));
    expect(slipMarkets.size).toBeGreaterThanOrEqual(6);
    // Freeze the shared client at the first suspension of a slip market (a goal suspends the
    // match's markets for well under a second at this feed rate), so both views can be
    // checked and photographed at leisure; then reconnect and resume.
    const suspended = await page.evaluate(
      (ids) =>
        new Promise<string>((resolve, reject) => {
          const client = (globalThis as unknown as { oddstream: { client: { on: (t: string, f: (s: { marketId: string }) => void) => () => void; close: () => void } } }).oddstream.client;
          const timer = setTimeout(() => reject(new Error("no suspension within 150 s")), 150_000);
          const off = client.on("suspended", (s) => {
            if (!ids.includes(s.marketId)) return;
            off();
            clearTimeout(timer);
            client.close();
            resolve(s.marketId);
          });
        }),
      [...slipMarkets],
    );
    const overlay = page.locator(`oddstream-board [data-market-id="${suspended}"] [data-testid="suspended"]`);
    await overlay.waitFor();
    expect(await overlay.textContent()).toContain("Suspended");
    expect(await page.locator(`oddstream-board [data-market-id="${suspended}"] button:not([disabled])`).count()).toBe(0);
    await expect
      .poll(async () => (await slipItems(page)).find((s) => s.marketId === suspended), { timeout: 10_000 })
      .toMatchObject({ state: "blocked", acceptEnabled: false, text: expect.stringContaining("Suspended") });
    await page.locator(`oddstream-betslip li.item[data-market-id="${suspended}"]`).scrollIntoViewIfNeeded();
    await page.screenshot({ path: screenshotPath("04-suspended"), fullPage: true });
    // Resume: the market comes back exactly as the server has it.
    await page.evaluate(() => (globalThis as unknown as { oddstream: { client: { connect: () => void } } }).oddstream.client.connect());
    await expect.poll(() => connectionState(page), { timeout: 20_000 }).toBe("open");
    await expect.poll(() => agreesWithServer(suspended), { timeout: 30_000, interval: 25 }).toBe("match");
    expect(pageErrors).toEqual([]);
  });

  it("has no serious or critical accessibility violation (board and slip, items on the slip)", async () => {
    expect((await slipItems(page)).length).toBeGreaterThan(0);
    expect(await seriousViolations(page)).toEqual([]);
  });
});
