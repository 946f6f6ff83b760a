/**
 * The live operator page (server/static/operator.html, docs/observability.md#operator-page)
 * in Chromium, on the operator listener of a gateway of a distributed run on the real Kafka
 * and Redis of ODDSTREAM_KAFKA / ODDSTREAM_REDIS (scripts/test.sh starts them; the stage
 * stamps travel only through them): a synthetic feed, a book processor, a gateway whose
 * plain board, open in another tab, follows the football lobby, so it delivers. Between
 * two polls of /metrics the charts are redrawn with new figures (the canvases' pixels
 * differ). Its screenshot goes to web/artifacts/operator.png (docs/img/operator.png is a copy).
 */
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { createServer } from "node:net";
import type { Browser, Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DevServer, launchBrowser, screenshotPath } from "./harness.js";

interface OperatorState {
  polls: number;
  role: string;
  throughputName: string;
  last: { connections: number | null; throughput: number | null; stages: Record<string, { p50: number | null; p99: number | null }> };
}

/** A port free on 127.0.0.1 now (the operator listener needs a number: 0 turns it off). */
async function freePort(): Promise<number> {
  const probe = createServer();
  await new Promise<void>((ok) => probe.listen(0, "127.0.0.1", ok));
  const address = probe.address();
  await new Promise<void>((ok) => probe.close(() => ok()));
  if (address === null || typeof address === "string") throw new Error("no port");
  return address.port;
}

const state = (p: Page): Promise<OperatorState> => p.evaluate(() => (window as unknown as { operator: OperatorState }).operator);
const pixels = (p: Page): Promise<string[]> =>
  p.evaluate(() => [...document.querySelectorAll("canvas")].map((c) => c.toDataURL()));

/** The services' address, or a failure that says how to start them (never a skip). */
function service(name: string): string {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set: start the services with: set -a; eval "$(scripts/services.sh up)"; set +a`);
  }
  return value;
}

const stack: DevServer[] = [];
let server: DevServer;
let browser: Browser;
let board: Page;
let page: Page;
let opsUrl = "";
const pageErrors: string[] = [];

beforeAll(async () => {
  const kafka = service("ODDSTREAM_KAFKA");
  // A Redis database of its own, emptied (the books restore from what a store holds).
  const redis = service("ODDSTREAM_REDIS").replace(/\/\d*$/, "/1");
  const flushed = spawnSync("redis-cli", ["-u", redis, "flushdb"], { encoding: "utf8", timeout: 10_000 });
  if (flushed.status !== 0) throw new Error(`redis-cli flushdb: ${flushed.stderr}`);
  const id = randomBytes(4).toString("hex");
  const space = ["--kafka", kafka, "--topic-prefix", `op${id}.`, "--partitions", "2"];
  const quiet = ["--log-level", "warning", "--ops-port", "0"];
  const books = ["books", ...space, "--redis", redis, "--group", `g${id}`, ...quiet];
  stack.push(await DevServer.run(books, /(books in group \S+)/));
  const opsPort = await freePort();
  // One process: the page draws its own process's metrics, and with a worker per core the
  // board tab's connection could land on a worker whose page this is not.
  const gateway = ["gateway", "--auth", "none", "--workers", "1", "--redis", redis, "--port", "0", "--log-level", "warning"];
  server = await DevServer.run([...gateway, "--ops-port", String(opsPort)]);
  stack.push(server);
  // The feed's own operator listener says when it produces (its stdout line).
  const feed = ["feed", "synth", ...space, "--events", "6", "--rate", "300", "--log-level", "warning"];
  stack.push(await DevServer.run([...feed, "--ops-port", String(await freePort())], /(operator endpoints on \S+)/));
  opsUrl = `http://127.0.0.1:${opsPort}/`;
  browser = await launchBrowser();
  board = await browser.newPage();
  await board.goto(server.url);
  page = await browser.newPage({ viewport: { width: 1200, height: 620 } });
  page.on("pageerror", (err) => pageErrors.push(err.message));
});

afterAll(async () => {
  await browser?.close();
  await Promise.all(stack.map((p) => p.stop()));
});

describe("the operator page", () => {
  it("draws connections, deliveries/s and stage latency that move between polls", async () => {
    await page.goto(opsUrl);
    await page.waitForFunction(
      () => {
        const s = (window as unknown as { operator?: OperatorState }).operator;
        // Before the first parse `last` has no stages yet: keep waiting, do not throw.
        const observed = s !== undefined && (s.last?.stages?.["gateway"]?.p99 ?? 0) > 0;
        return observed && s.polls >= 3 && (s.last?.throughput ?? 0) > 0 && (s.last?.connections ?? 0) >= 1;
      },
      undefined,
      { timeout: 30_000 },
    );
    const first = await state(page);
    expect(first.role).toBe("gateway");
    expect(first.throughputName).toBe("deliveries/s");
    const before = await pixels(page);
    await page.waitForFunction((n) => (window as unknown as { operator: OperatorState }).operator.polls >= n + 2, first.polls, {
      timeout: 10_000,
    });
    const after = await pixels(page);
    const second = await state(page);
    // connections, deliveries/s: redrawn with the new poll's points.
    expect(after[0]).not.toBe(before[0]);
    expect(after[1]).not.toBe(before[1]);
    expect(second.last.throughput).toBeGreaterThan(0);
    // Stage lines (the p99 of the minute before each poll) moved on; the gateway's stages
    // were observed and drawn as bars.
    expect(after[2]).not.toBe(before[2]);
    for (const stage of ["redis", "gateway", "pipeline"]) {
      expect(second.last.stages[stage]?.p99 ?? 0).toBeGreaterThan(0);
    }
    // A few more seconds of history for the picture in the docs.
    await page.waitForFunction((n) => (window as unknown as { operator: OperatorState }).operator.polls >= n + 8, second.polls, {
      timeout: 15_000,
    });
    await page.screenshot({ path: screenshotPath("operator") });
    expect(pageErrors).toEqual([]);
  });

  it("is served by the operator listener only, not the public port", async () => {
    const publicPage = await fetch(`${server.url}/metrics`, { signal: AbortSignal.timeout(5000) });
    expect(publicPage.status).toBe(404);
    const ops = await fetch(opsUrl, { signal: AbortSignal.timeout(5000) });
    expect(ops.status).toBe(200);
    expect(ops.headers.get("content-type")).toContain("text/html");
    expect(await ops.text()).not.toMatch(/<script[^>]+src=|<link[^>]+href="http/);
  });
});
