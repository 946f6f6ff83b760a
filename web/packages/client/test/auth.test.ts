import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { createClient, tokenExpiry, type ClientOptions } from "../src/index.js";
import { EPOCH, FakeEventSource, FakeWebSocket, snapshot } from "./fakes.js";

const M = "fb-1:1x2";
const NOW = 1_767_364_200_000;

/** An unsigned JWT-shaped token with `exp` (the client never verifies, only reads it). */
function jwt(exp: number, sub = "p-1"): string {
  const part = (value: object) =>
    btoa(JSON.stringify(value)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  return `${part({ alg: "HS256" })}.${part({ sub, exp })}.c2ln`;
}

function make(token: () => Promise<string>, options: Partial<ClientOptions> = {}) {
  return createClient({
    url: "http://gw.test/",
    WebSocket: FakeWebSocket,
    EventSource: FakeEventSource,
    random: () => 0.5,
    autoConnect: false,
    now: () => Date.now(),
    token,
    ...options,
  });
}

beforeEach(() => {
  vi.useFakeTimers();
  vi.setSystemTime(NOW);
  FakeWebSocket.reset();
  FakeEventSource.reset();
});
afterEach(() => {
  vi.useRealTimers();
});

describe("access tokens", () => {
  it("reads exp from a JWT, and nothing from anything else", () => {
    expect(tokenExpiry(jwt(1234))).toBe(1234);
    expect(tokenExpiry("opaque")).toBeNull();
    expect(tokenExpiry("a.!!!.c")).toBeNull();
  });

  it("sends the provider's token as the first command, never in the URL", async () => {
    const token = jwt(NOW / 1000 + 3600);
    const client = make(() => Promise.resolve(token));
    client.subscribe({ markets: [M] });
    client.connect();
    FakeWebSocket.last.accept();
    await vi.advanceTimersByTimeAsync(0);
    const ws = FakeWebSocket.last;
    expect(ws.url).not.toContain(token);
    expect(ws.sent.map((c) => c.type)).toEqual(["auth", "subscribe"]);
    expect(ws.sent[0]?.token).toBe(token);
  });

  it("refreshes refreshBeforeMs before exp, with the provider's next token", async () => {
    const tokens = [jwt(NOW / 1000 + 120), jwt(NOW / 1000 + 3600)];
    const provider = vi.fn(() => Promise.resolve(tokens.shift() ?? "none"));
    const client = make(provider, { refreshBeforeMs: 30_000, heartbeatMs: 3_600_000 });
    client.connect();
    FakeWebSocket.last.accept();
    await vi.advanceTimersByTimeAsync(89_000);
    expect(FakeWebSocket.last.commands("refresh")).toEqual([]);
    await vi.advanceTimersByTimeAsync(1_000);
    const [refresh] = FakeWebSocket.last.commands("refresh");
    expect(refresh?.token).toBe(jwt(NOW / 1000 + 3600));
    expect(provider).toHaveBeenCalledTimes(2);
    expect(client.state).toBe("open");
  });

  it("after the expiry close (4003) takes a new token and resumes its books", async () => {
    let n = 0;
    const provider = vi.fn(() => Promise.resolve(jwt(NOW / 1000 + 3600, `p-${++n}`)));
    const client = make(provider);
    client.subscribe({ markets: [M] });
    client.connect();
    const first = FakeWebSocket.last;
    first.accept();
    await vi.advanceTimersByTimeAsync(0);
    first.push({ type: "ack", command: "subscribe", id: first.commands("subscribe")[0]?.id, markets: [M] });
    first.push(snapshot(M, 10));
    first.push({ type: "error", code: "token_expired", message: "token expired" });
    first.drop(4003, "token expired; resume with a new token");
    expect(client.state).toBe("reconnecting");
    await vi.advanceTimersByTimeAsync(5_000); // The backoff, shorter than the connect timeout.
    const second = FakeWebSocket.last;
    expect(second).not.toBe(first);
    second.accept();
    await vi.advanceTimersByTimeAsync(0);
    expect(second.sent.map((c) => c.type)).toEqual(["auth", "resume"]);
    expect(second.sent[0]?.token).toBe(jwt(NOW / 1000 + 3600, "p-2"));
    expect(second.commands("resume")[0]?.positions).toEqual([{ market_id: M, epoch: EPOCH, seq: 10 }]);
  });

  it("stops for good when the server refuses the token (4102)", async () => {
    const client = make(() => Promise.resolve("forged"));
    client.connect();
    FakeWebSocket.last.accept();
    await vi.advanceTimersByTimeAsync(0);
    FakeWebSocket.last.push({ type: "error", code: "token_invalid", message: "bad signature" });
    FakeWebSocket.last.drop(4102, "unauthorized");
    expect(client.state).toBe("closed");
  });
});
