/** In-memory stand-ins for the browser's WebSocket and EventSource, driven by the test. */
import type { EventSourceLike, WebSocketLike } from "../src/index.js";

export class FakeWebSocket implements WebSocketLike {
  static instances: FakeWebSocket[] = [];
  static reset(): void {
    FakeWebSocket.instances = [];
  }
  static get last(): FakeWebSocket {
    const ws = FakeWebSocket.instances.at(-1);
    if (!ws) throw new Error("no WebSocket opened");
    return ws;
  }

  readyState = 0;
  onopen: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  onclose: ((ev: { code: number; reason: string }) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  readonly sent: Record<string, unknown>[] = [];
  closedByClient: { code?: number; reason?: string } | null = null;

  constructor(
    readonly url: string,
    readonly protocols?: string | string[],
  ) {
    FakeWebSocket.instances.push(this);
  }

  send(data: string): void {
    if (this.readyState !== 1) throw new Error("send on a socket that is not open");
    this.sent.push(JSON.parse(data) as Record<string, unknown>);
  }

  close(code?: number, reason?: string): void {
    this.closedByClient = { code, reason };
    this.readyState = 3;
  }

  // -- the server's side --
  accept(): void {
    this.readyState = 1;
    this.onopen?.({});
  }

  push(message: object): void {
    this.onmessage?.({ data: JSON.stringify(message) });
  }

  /** One WebSocket message holding `messages` as a batch (`?batch=1`). */
  pushBatch(messages: readonly unknown[]): void {
    this.onmessage?.({ data: JSON.stringify(messages) });
  }

  /** One WebSocket message with exactly this payload. */
  pushRaw(data: unknown): void {
    this.onmessage?.({ data });
  }

  drop(code = 1006, reason = ""): void {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }

  commands(type?: string): Record<string, unknown>[] {
    return type ? this.sent.filter((c) => c.type === type) : this.sent;
  }
}

export class FakeEventSource implements EventSourceLike {
  static instances: FakeEventSource[] = [];
  static reset(): void {
    FakeEventSource.instances = [];
  }

  readyState = 0;
  onopen: ((ev: unknown) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  closed = false;
  private readonly listeners = new Map<string, ((ev: { data: string; lastEventId?: string }) => void)[]>();
  /** The stream's last `id:`, as the browser keeps it. */
  lastEventId = "";

  constructor(readonly url: string) {
    FakeEventSource.instances.push(this);
  }

  addEventListener(type: string, listener: (ev: { data: string; lastEventId?: string }) => void): void {
    const list = this.listeners.get(type) ?? [];
    list.push(listener);
    this.listeners.set(type, list);
  }

  close(): void {
    this.closed = true;
    this.readyState = 2;
  }

  accept(): void {
    this.readyState = 1;
    this.onopen?.({});
  }

  /** One event; `id` is its `id:` line (none: the stream's last id stays). */
  push(message: { type: string }, id?: string): void {
    if (id !== undefined) this.lastEventId = id;
    const ev = { data: JSON.stringify(message), lastEventId: this.lastEventId };
    for (const l of this.listeners.get(message.type) ?? []) l(ev);
  }
}

let seq = 0;
export const EPOCH = "ep1";

export function snapshot(
  marketId: string,
  s: number,
  prices: [string, string, string] = ["2.10", "3.40", "3.60"],
  extra: Record<string, unknown> = {},
): Record<string, unknown> {
  seq = s;
  return {
    type: "snapshot",
    market_id: marketId,
    event_id: marketId.split(":")[0],
    seq: s,
    epoch: EPOCH,
    ts: 1000 + s,
    sport: "football",
    kind: "1x2",
    name: "Match result",
    status: "open",
    main: true,
    selections: [
      { selection_id: "home", name: "Home", price: prices[0] },
      { selection_id: "draw", name: "Draw", price: prices[1] },
      { selection_id: "away", name: "Away", price: prices[2] },
    ],
    ...extra,
  };
}

export function delta(marketId: string, s: number, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    type: "delta",
    market_id: marketId,
    event_id: marketId.split(":")[0],
    seq: s,
    epoch: EPOCH,
    ts: 1000 + s,
    ...extra,
  };
}

export function lastSeq(): number {
  return seq;
}
