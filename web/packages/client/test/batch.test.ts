/** WebSocket batches (`/ws?batch=1`): arrays of server messages applied one by one, in order. */
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { createClient, type ClientOptions, type OddsClient } from "../src/index.js";
import { decodeMessages } from "../src/transport.js";
import { EPOCH, FakeEventSource, FakeWebSocket, delta, snapshot } from "./fakes.js";

const M = "fb-1:1x2";
const N = "fb-2:1x2";

function make(options: Partial<ClientOptions> = {}): OddsClient {
  return createClient({
    url: "http://gw.test/",
    WebSocket: FakeWebSocket,
    EventSource: FakeEventSource,
    random: () => 0.5,
    autoConnect: false,
    ...options,
  });
}

/** An open client following M and N (acked), with everything it emits recorded. */
function opened(options: Partial<ClientOptions> = {}) {
  const client = make(options);
  const log: string[] = [];
  client.on("book", (b) => log.push(`book:${b.book.marketId}:${b.book.seq}:${b.cause}`));
  client.on("price", (p) => log.push(`price:${p.marketId}:${p.selectionId}:${p.previous}->${p.price}:${p.direction}`));
  client.on("status", (s) => log.push(`status:${s.marketId}:${s.previous}->${s.status}`));
  client.on("resync", (r) => log.push(`resync:${r.marketId}:${r.reason}`));
  client.on("drain", (d) => log.push(`drain:${d.reason}`));
  client.on("state", (s) => log.push(`state:${s.state}`));
  client.subscribe({ markets: [M, N] });
  client.connect();
  const ws = FakeWebSocket.last;
  ws.accept();
  ws.push({ type: "ack", command: "subscribe", id: ws.commands("subscribe")[0]?.id, markets: [M, N] });
  return { client, ws, log };
}

/** A stream touching two markets: prices, a suspension, a gap healed by a replay. */
function stream(resumeId: number): object[] {
  return [
    snapshot(M, 10),
    snapshot(N, 3, ["1.50", "4.00", "6.00"]),
    delta(M, 11, { selections: [{ selection_id: "home", price: "2.20" }] }),
    delta(N, 4, { selections: [{ selection_id: "away", price: "5.50" }] }),
    { type: "heartbeat", ts: 5 },
    delta(M, 12, { status: "suspended", reason: "goal" }),
    delta(M, 11), // stale duplicate
    delta(N, 6, { selections: [{ selection_id: "home", price: "1.40" }] }), // gap: 5 missing
    delta(M, 13, { status: "open", reason: null, selections: [{ selection_id: "draw", price: "3.30" }] }),
    { type: "ack", command: "resume", id: resumeId, markets: [N] },
    delta(N, 5, { selections: [{ selection_id: "draw", price: "4.20" }] }),
    delta(N, 6, { selections: [{ selection_id: "home", price: "1.40" }] }),
    { type: "future-thing", x: 1 },
  ];
}

beforeEach(() => {
  vi.useFakeTimers();
  FakeWebSocket.reset();
  FakeEventSource.reset();
});
afterEach(() => {
  vi.useRealTimers();
});

describe("batch URL", () => {
  it("asks for batches by default", () => {
    make().connect();
    expect(FakeWebSocket.last.url).toBe("ws://gw.test/ws?batch=1");
    make({ batch: true, url: "https://gw.test/odds/" }).connect();
    expect(FakeWebSocket.last.url).toBe("wss://gw.test/odds/ws?batch=1");
  });

  it("opens a plain /ws with batch: false", () => {
    make({ batch: false }).connect();
    expect(FakeWebSocket.last.url).toBe("ws://gw.test/ws");
    expect(new URL(FakeWebSocket.last.url).searchParams.has("batch")).toBe(false);
  });

  it("keeps asking for batches on every reconnect", () => {
    const { ws } = opened();
    ws.drop(1006);
    vi.advanceTimersByTime(1000);
    expect(FakeWebSocket.instances).toHaveLength(2);
    expect(FakeWebSocket.instances.map((w) => w.url)).toEqual([
      "ws://gw.test/ws?batch=1",
      "ws://gw.test/ws?batch=1",
    ]);
  });

  it("leaves SSE untouched", () => {
    const client = make({ transport: "sse" });
    client.subscribe({ markets: [M] });
    client.connect();
    expect(FakeEventSource.instances.at(-1)?.url).toBe("http://gw.test/sse?markets=fb-1%3A1x2");
  });
});

describe("decodeMessages", () => {
  it("accepts one message or an array of them, in order, skipping invalid elements", () => {
    const a = delta(M, 1);
    const b = delta(M, 2);
    expect(decodeMessages(JSON.stringify(a))).toEqual([a]);
    expect(decodeMessages(JSON.stringify([a, b]))).toEqual([a, b]);
    expect(decodeMessages(JSON.stringify([b, 7, null, "x", { type: 3 }, [a], a]))).toEqual([b, a]);
    expect(decodeMessages(JSON.stringify([]))).toEqual([]);
    expect(decodeMessages("not json")).toEqual([]);
    expect(decodeMessages(JSON.stringify(42))).toEqual([]);
    expect(decodeMessages(new Uint8Array([1, 2]))).toEqual([]);
  });
});

describe("batched messages", () => {
  it("produce the same books, events and stats as the same messages one by one", () => {
    const single = opened({ batch: false });
    const resumeId = 2; // the id the gap's resume takes (after the subscribe's 1)
    for (const m of stream(resumeId)) single.ws.push(m);
    expect(single.ws.commands("resume")[0]?.id).toBe(resumeId);

    const batched = opened();
    const messages = stream(resumeId);
    // Split unevenly: a big batch, a batch of one, and the rest.
    batched.ws.pushBatch(messages.slice(0, 7));
    batched.ws.pushBatch(messages.slice(7, 8));
    batched.ws.pushBatch(messages.slice(8));
    expect(batched.ws.commands()).toEqual(single.ws.commands());

    expect(batched.client.markets()).toEqual(single.client.markets());
    expect(batched.log).toEqual(single.log);
    expect(batched.client.stats).toEqual(single.client.stats);
    expect(batched.client.getMarket(M)).toMatchObject({ seq: 13, status: "open", syncing: false });
    expect(batched.client.getMarket(N)).toMatchObject({ seq: 6, syncing: false, epoch: EPOCH });
    expect(batched.client.getMarket(N)?.selections.map((s) => s.price)).toEqual(["1.40", "4.20", "5.50"]);
    expect(batched.client.stats).toMatchObject({ deltasApplied: 6, staleIgnored: 1, gaps: 1 });
  });

  it("applies the elements of a batch in order", () => {
    const { client, ws, log } = opened();
    ws.pushBatch([snapshot(M, 10), delta(M, 11), delta(M, 12), delta(M, 13)]);
    expect(log.filter((l) => l.startsWith("book:"))).toEqual([
      `book:${M}:10:snapshot`,
      `book:${M}:11:delta`,
      `book:${M}:12:delta`,
      `book:${M}:13:delta`,
    ]);
    // Out of order inside a batch is a gap, exactly as it would be unbatched.
    ws.pushBatch([delta(M, 15), delta(M, 14)]);
    expect(ws.commands("resume")[0]).toMatchObject({ positions: [{ market_id: M, epoch: EPOCH, seq: 13 }] });
    expect(log.slice(-3)).toEqual([`book:${M}:13:syncing`, `resync:${M}:gap`, `book:${M}:14:delta`]);
    expect(client.getMarket(M)).toMatchObject({ seq: 14, syncing: true });
  });

  it("handles a mixed stream: batches and single objects", () => {
    const { client, ws } = opened();
    ws.pushBatch([snapshot(M, 10), delta(M, 11, { selections: [{ selection_id: "home", price: "2.30" }] })]);
    ws.push(delta(M, 12, { selections: [{ selection_id: "home", price: "2.40" }] }));
    ws.pushBatch([delta(M, 13, { selections: [{ selection_id: "home", price: "2.50" }] })]);
    ws.push({ type: "heartbeat", ts: 1 });
    ws.pushBatch([delta(M, 14), delta(M, 15, { selections: [{ selection_id: "away", price: "3.00" }] })]);
    expect(client.getMarket(M)).toMatchObject({ seq: 15, syncing: false });
    expect(client.getMarket(M)?.selections.map((s) => s.price)).toEqual(["2.50", "3.40", "3.00"]);
    expect(client.stats.deltasApplied).toBe(5);
  });

  it("skips invalid elements like invalid single messages, keeping the rest of the batch", () => {
    const { client, ws } = opened();
    const before = client.stats.messages;
    ws.pushBatch([snapshot(M, 10), 42, null, "x", { no: "type" }, [delta(M, 11)], delta(M, 11), { type: "future-thing" }]);
    expect(client.getMarket(M)).toMatchObject({ seq: 11, syncing: false });
    expect(client.stats.messages - before).toBe(3); // snapshot, delta, the unknown type
    ws.pushBatch([]);
    ws.pushRaw("[not json");
    ws.pushRaw("not json");
    expect(client.getMarket(M)?.seq).toBe(11);
    expect(client.state).toBe("open");
  });

  it("any batch restarts the heartbeat clock", () => {
    const { client, ws } = opened({ heartbeatMs: 1000 });
    vi.advanceTimersByTime(2000);
    ws.pushBatch([{ type: "heartbeat", ts: 1 }]);
    vi.advanceTimersByTime(2499);
    expect(client.state).toBe("open");
    vi.advanceTimersByTime(1);
    expect(client.state).toBe("reconnecting");
  });

  it("drops the rest of a batch after a message that ends the connection", () => {
    const { client, ws, log } = opened();
    ws.pushBatch([
      snapshot(M, 10),
      delta(M, 11),
      { type: "reconnect", reason: "draining", after_ms: 500, positions: [{ market_id: M, epoch: EPOCH, seq: 11 }] },
      delta(M, 12), // after the socket was closed: never applied, as unbatched
    ]);
    expect(client.state).toBe("reconnecting");
    expect(client.getMarket(M)).toMatchObject({ seq: 11, syncing: false });
    expect(log).toContain("drain:draining");
    expect(ws.closedByClient).not.toBeNull();
    vi.advanceTimersByTime(500);
    FakeWebSocket.last.accept();
    expect(FakeWebSocket.last.url).toBe("ws://gw.test/ws?batch=1");
    expect(FakeWebSocket.last.commands("resume")[0]).toMatchObject({ positions: [{ market_id: M, epoch: EPOCH, seq: 11 }] });
  });
});
