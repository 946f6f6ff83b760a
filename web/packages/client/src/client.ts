/**
 * The oddstream client: one connection (WebSocket, or SSE as a fallback) with an explicit
 * state machine, refcounted subscriptions, exact books rebuilt from snapshot + deltas, and
 * typed events. A book is only ever a snapshot plus every later delta in order: on any gap
 * the client keeps the last exact book (flagged `syncing`) and heals it with `resume`; if
 * the server cannot heal it in time, the client reconnects and resumes everything.
 */
import { backoffDelay, type BackoffOptions } from "./backoff.js";
import {
  applyDelta,
  checkSnapshot,
  eventView,
  fromSnapshot,
  positionOf,
  type EventView,
  type MarketBook,
  type MarketStatus,
  type RefusalReason,
  type SelectionStatus,
} from "./book.js";
import { Emitter, reportListenerError } from "./emitter.js";
import type {
  Ack,
  ClientCommand,
  DecimalString,
  Delta,
  Error as ErrorMessage,
  EventState,
  Position,
  Reconnect,
  ServerMessage,
  Snapshot,
} from "./generated/protocol.js";
import { compareDecimal } from "./price.js";
import {
  openEventSource,
  openWebSocket,
  type EventSourceConstructor,
  type Transport,
  type TransportKind,
  type WebSocketConstructor,
} from "./transport.js";

export type ConnectionState = "connecting" | "open" | "reconnecting" | "closed";

/** Every legal transition of the connection state machine. */
export const TRANSITIONS: Readonly<Record<ConnectionState, readonly ConnectionState[]>> = {
  connecting: ["open", "reconnecting", "closed"],
  open: ["reconnecting", "closed"],
  reconnecting: ["connecting", "closed"],
  closed: ["connecting"],
};

export interface StateChange {
  readonly state: ConnectionState;
  readonly previous: ConnectionState;
  /** Consecutive failed attempts so far (0 once a connection is confirmed). */
  readonly attempt: number;
  /** For `reconnecting`: the wait before the next attempt. */
  readonly delayMs?: number;
  readonly reason?: string;
  readonly transport: TransportKind | null;
}

export type Direction = "up" | "down" | "none";

export interface PriceChange {
  readonly marketId: string;
  readonly eventId: string;
  readonly selectionId: string;
  readonly previous: DecimalString | null;
  readonly price: DecimalString | null;
  /** "up" when the odds lengthened (a higher decimal price), "down" when they shortened. */
  readonly direction: Direction;
  readonly seq: number;
  readonly ts: number;
}

export interface MarketStatusChange {
  readonly marketId: string;
  readonly eventId: string;
  readonly previous: MarketStatus;
  readonly status: MarketStatus;
  readonly reason: string | null;
  readonly book: MarketBook;
}

export interface MarketResult {
  readonly marketId: string;
  readonly eventId: string;
  readonly status: "settled" | "voided";
  readonly winners: readonly string[];
  readonly selections: readonly { readonly selectionId: string; readonly status: SelectionStatus }[];
  readonly book: MarketBook;
}

export interface BookUpdate {
  readonly book: MarketBook;
  readonly previous: MarketBook | undefined;
  /** `reset`: the server could not resume this market and replaced it (epoch or history). */
  readonly cause: "snapshot" | "reset" | "delta" | "syncing";
}

export interface EventUpdate {
  readonly event: EventView;
  readonly previous: EventView | undefined;
}

export interface ResyncNotice {
  readonly marketId: string;
  readonly reason: RefusalReason | "resume-refused" | "timeout";
  readonly position: Position;
}

export interface DrainNotice {
  readonly reason: string;
  readonly afterMs: number;
  readonly positions: readonly Position[];
}

export interface ClientError {
  readonly code: string;
  readonly message: string;
  readonly id?: string | number | null;
}

export interface ClientEvents {
  state: StateChange;
  book: BookUpdate;
  price: PriceChange;
  status: MarketStatusChange;
  suspended: MarketStatusChange;
  reopened: MarketStatusChange;
  result: MarketResult;
  event: EventUpdate;
  resync: ResyncNotice;
  drain: DrainNotice;
  error: ClientError;
}

export interface Topics {
  readonly markets?: readonly string[];
  readonly events?: readonly string[];
  readonly lobbies?: readonly string[];
}

export interface LobbyEntry {
  readonly eventId: string;
  readonly startTime: number;
  /** The event's main markets the client holds, in arrival order. */
  readonly marketIds: readonly string[];
}

/** Which events and main markets a sport's lobby holds; changes only with membership. */
export interface LobbyView {
  readonly sport: string;
  readonly events: readonly LobbyEntry[];
}

export interface ClientStats {
  messages: number;
  deltasApplied: number;
  staleIgnored: number;
  gaps: number;
  resets: number;
  reconnects: number;
}

export interface ClientOptions {
  /** The gateway's base URL, e.g. "http://127.0.0.1:8000/" (default: the page's origin). */
  readonly url?: string;
  /** "auto" (default): WebSocket, falling back to SSE when WebSocket cannot connect. */
  readonly transport?: "auto" | "websocket" | "sse";
  /**
   * WebSocket only: ask for batches (`/ws?batch=1`, default true). The server then sends
   * every WebSocket message as an array of one or more messages, which the client applies
   * in order exactly as if they had arrived one by one; a browser handles one `message`
   * event for many deltas. `false` opens `/ws` as before (one message per WebSocket
   * message). SSE is unaffected.
   */
  readonly batch?: boolean;
  readonly backoff?: BackoffOptions;
  /** The server's heartbeat interval (default 15 000 ms). */
  readonly heartbeatMs?: number;
  /** Silence, in heartbeat intervals, after which the connection is dead (default 2.5). */
  readonly deadAfterHeartbeats?: number;
  /** A connection attempt not open after this long is abandoned (default 10 000 ms). */
  readonly connectTimeoutMs?: number;
  /** A gap not healed after this long forces a reconnect (default 5 000 ms). */
  readonly resyncTimeoutMs?: number;
  /** With "auto": WebSocket attempts that never opened before switching to SSE (default 2). */
  readonly fallbackAfter?: number;
  /** Connect at once (default true); otherwise call `connect()`. */
  readonly autoConnect?: boolean;
  /**
   * The access token provider of a gateway that asks for tokens (docs/auth.md), called on
   * every connection; its token never goes in a URL. WebSocket: sent as the first command
   * (`auth`), and again with `refresh` `refreshBeforeMs` before the token's `exp`; after an
   * expiry close (4003) the client reconnects, takes a new token and resumes every book.
   * SSE: exchanged for a single-use ticket (`POST /v1/tickets` with `Authorization:
   * Bearer`) before every stream, which opens `/sse?...&ticket=`; a stream that breaks is
   * reopened by the client with a new ticket (the browser's own retry would reuse the
   * spent one), resuming from its last id.
   */
  readonly token?: () => Promise<string>;
  /** How long before a token's `exp` it is refreshed (default 60 000 ms). */
  readonly refreshBeforeMs?: number;
  readonly WebSocket?: WebSocketConstructor;
  readonly EventSource?: EventSourceConstructor;
  /** SSE with `token`: how tickets are fetched (default: the global `fetch`). */
  readonly fetch?: typeof fetch;
  readonly random?: () => number;
  readonly now?: () => number;
}

type Kind = "markets" | "events" | "lobbies";

/** The `exp` claim (epoch seconds) of a JWT, read without verifying it; null without one. */
export function tokenExpiry(token: string): number | null {
  const claims = token.split(".")[1];
  if (!claims) return null;
  try {
    const base64 = claims.replace(/-/g, "+").replace(/_/g, "/");
    const payload = JSON.parse(atob(base64.padEnd(Math.ceil(base64.length / 4) * 4, "="))) as unknown;
    const exp = (payload as { exp?: unknown } | null)?.exp;
    return typeof exp === "number" ? exp : null;
  } catch {
    return null;
  }
}

interface Heal {
  /** The resume command healing this market; its ack must name the market. */
  readonly commandId: number | null;
  acked: boolean;
}

const EMPTY_LOBBY_EVENTS: readonly LobbyEntry[] = [];

export class OddsClient {
  readonly stats: ClientStats = {
    messages: 0,
    deltasApplied: 0,
    staleIgnored: 0,
    gaps: 0,
    resets: 0,
    reconnects: 0,
  };

  private readonly emitter = new Emitter<ClientEvents>();
  private readonly watchers = new Map<string, Set<() => void>>();
  private readonly base: URL;
  private readonly opts: ClientOptions;
  private _state: ConnectionState = "closed";
  private transport: Transport | null = null;
  private kind: TransportKind;
  private attempt = 0;
  private neverOpened = 0;
  private confirmed = false;
  private nextId = 1;
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  private connectTimer: ReturnType<typeof setTimeout> | undefined;
  private silenceTimer: ReturnType<typeof setTimeout> | undefined;
  private refreshTimer: ReturnType<typeof setTimeout> | undefined;
  private readonly healTimers = new Map<string, ReturnType<typeof setTimeout>>();
  private readonly heals = new Map<string, Heal>();
  private readonly books = new Map<string, MarketBook>();
  private readonly events = new Map<string, EventView>();
  private readonly lobbies = new Map<string, LobbyView>();
  private readonly wanted: Record<Kind, Map<string, number>> = {
    markets: new Map(),
    events: new Map(),
    lobbies: new Map(),
  };
  /** Markets and events heard from on the current connection. */
  private readonly seenMarkets = new Set<string>();
  private readonly seenEvents = new Set<string>();
  /** Resume commands in flight: id -> the markets whose positions they carry. */
  private readonly resumes = new Map<number, { kind: "gap" | "connection"; markets: readonly string[] }>();
  private sseRestart = false;
  /** The last SSE `id:`: a stream the client opens itself resumes from it (`?last_event_id=`). */
  private sseToken: string | null = null;
  /** Bumped by each ticket request and each teardown: a late ticket is dropped. */
  private ticketAttempt = 0;
  /** A ticket is on its way: the stream it opens will follow the subscriptions then. */
  private ticketPending = false;
  private readonly online = (): void => {
    if (this._state !== "closed") this.reconnect("back online", 0);
  };
  private readonly offline = (): void => {
    if (this._state !== "closed") this.scheduleReconnect("offline");
  };

  constructor(options: ClientOptions = {}) {
    this.opts = options;
    const origin = typeof location !== "undefined" ? location.href : "http://127.0.0.1:8000/";
    this.base = new URL(options.url ?? origin, origin);
    const hasWs = options.WebSocket !== undefined || typeof globalThis.WebSocket !== "undefined";
    this.kind = options.transport === "sse" || !hasWs ? "sse" : "websocket";
    if (options.autoConnect !== false) this.connect();
  }

  // -- public API -------------------------------------------------------------------------

  get state(): ConnectionState {
    return this._state;
  }

  /** The transport in use (or about to be used). */
  get transportKind(): TransportKind {
    return this.kind;
  }

  on<K extends keyof ClientEvents>(type: K, listener: (payload: ClientEvents[K]) => void): () => void {
    return this.emitter.on(type, listener);
  }

  /** Start connecting (no-op unless closed). */
  connect(): void {
    if (this._state !== "closed") return;
    this.open();
  }

  /** Close for good (until `connect()`); books are kept. */
  close(): void {
    this.watchNetwork(false);
    this.dropTransport();
    clearTimeout(this.reconnectTimer);
    if (this._state !== "closed") this.setState("closed", { reason: "closed by client" });
  }

  /** Drop the connection now and reconnect (resuming everything) after `delayMs`. */
  reconnect(reason = "requested", delayMs = 0): void {
    if (this._state === "closed") {
      this.open();
      return;
    }
    this.scheduleReconnect(reason, delayMs);
  }

  /**
   * Follow markets, events and/or sport lobbies. Refcounted: each call returns its own
   * release function, and a topic is unsubscribed when its last holder releases it.
   */
  subscribe(topics: Topics): () => void {
    const added: Record<Kind, string[]> = { markets: [], events: [], lobbies: [] };
    for (const kind of ["markets", "events", "lobbies"] as const) {
      for (const id of new Set(topics[kind] ?? [])) {
        const n = this.wanted[kind].get(id) ?? 0;
        this.wanted[kind].set(id, n + 1);
        if (n === 0) added[kind].push(id);
      }
    }
    if (added.markets.length + added.events.length + added.lobbies.length > 0) {
      this.onTopicsChanged("subscribe", added);
    }
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.release(topics);
    };
  }

  getMarket(marketId: string): MarketBook | undefined {
    return this.books.get(marketId);
  }

  getEvent(eventId: string): EventView | undefined {
    return this.events.get(eventId);
  }

  /** The lobby of a sport: its events and their main markets (stable until it changes). */
  getLobby(sport: string): LobbyView {
    let view = this.lobbies.get(sport);
    if (!view) {
      view = this.buildLobby(sport);
      this.lobbies.set(sport, view);
    }
    return view;
  }

  /** Every market book held. */
  markets(): MarketBook[] {
    return [...this.books.values()];
  }

  /** Call `fn` whenever the market's book changes (for `useSyncExternalStore` and signals). */
  watchMarket(marketId: string, fn: () => void): () => void {
    return this.watch(`m:${marketId}`, fn);
  }

  watchEvent(eventId: string, fn: () => void): () => void {
    return this.watch(`e:${eventId}`, fn);
  }

  watchLobby(sport: string, fn: () => void): () => void {
    return this.watch(`l:${sport}`, fn);
  }

  watchState(fn: () => void): () => void {
    return this.watch("state", fn);
  }

  // -- connection state machine ---------------------------------------------------------------

  private setState(state: ConnectionState, extra: { delayMs?: number; reason?: string } = {}): void {
    const previous = this._state;
    if (!TRANSITIONS[previous].includes(state)) {
      throw new Error(`oddstream: illegal connection transition ${previous} -> ${state}`);
    }
    this._state = state;
    const change: StateChange = {
      state,
      previous,
      attempt: this.attempt,
      transport: this.transport?.kind ?? (state === "closed" ? null : this.kind),
      ...extra,
    };
    this.emitter.emit("state", change);
    this.notify("state");
  }

  /**
   * A page's network going away (a phone between cells, airplane mode) drops the connection
   * at once instead of waiting for the heartbeat timeout; its return reconnects without
   * waiting for the backoff. Both resume as after any reconnect.
   */
  private watchNetwork(on: boolean): void {
    if (typeof window === "undefined") return;
    if (on) {
      window.addEventListener("online", this.online);
      window.addEventListener("offline", this.offline);
    } else {
      window.removeEventListener("online", this.online);
      window.removeEventListener("offline", this.offline);
    }
  }

  private open(): void {
    if (this._state === "closed") this.watchNetwork(true);
    clearTimeout(this.reconnectTimer);
    this.confirmed = false;
    this.seenMarkets.clear();
    this.seenEvents.clear();
    this.resumes.clear();
    this.setState("connecting");
    const handler = {
      opened: () => this.onOpen(),
      message: (m: ServerMessage) => this.onMessage(m),
      closed: (info: { code: number; reason: string; opened: boolean; retry: boolean }) =>
        this.onClosed(info),
      retrying: () => this.onSseRetrying(),
      token: (token: string) => (this.sseToken = token),
    };
    if (this.kind === "websocket") {
      const Ctor = this.opts.WebSocket ?? (globalThis.WebSocket as unknown as WebSocketConstructor);
      const url = new URL("ws", this.base);
      url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
      if (this.opts.batch !== false) url.searchParams.set("batch", "1");
      this.transport = openWebSocket(Ctor, url.href, handler);
    } else {
      const url = this.sseUrl();
      if (url === null) return; // Nothing to follow yet: opened on the first subscribe.
      const Ctor = this.opts.EventSource ?? (globalThis.EventSource as unknown as EventSourceConstructor);
      if (this.opts.token) void this.openTicketed(this.opts.token, (href) => openEventSource(Ctor, href, handler, 0));
      else this.transport = openEventSource(Ctor, url, handler);
    }
    this.connectTimer = setTimeout(
      () => this.scheduleReconnect("connect timeout"),
      this.opts.connectTimeoutMs ?? 10_000,
    );
  }

  private onOpen(): void {
    clearTimeout(this.connectTimer);
    this.neverOpened = 0;
    this.setState("open");
    this.armSilenceTimer();
    if (this.transport?.kind !== "websocket") return;
    if (this.opts.token) void this.authenticate("auth", this.transport);
    else this.sendInitial();
  }

  /**
   * Send the provider's token on `transport`: `auth` (then the initial commands, which the
   * server runs after it) or `refresh`; then plan the next refresh from the token's `exp`.
   */
  private async authenticate(type: "auth" | "refresh", transport: Transport): Promise<void> {
    const provider = this.opts.token;
    if (!provider) return;
    let token: string;
    try {
      token = await provider();
    } catch (err) {
      if (transport !== this.transport) return;
      this.emitter.emit("error", { code: "token_provider", message: String(err) });
      if (type === "auth") this.scheduleReconnect("token provider failed");
      return;
    }
    if (transport !== this.transport) return; // That connection went away meanwhile.
    this.send({ type, token, id: this.id() });
    if (type === "auth") this.sendInitial();
    const exp = tokenExpiry(token);
    if (exp === null) return;
    const delay = Math.max(0, exp * 1000 - this.now() - (this.opts.refreshBeforeMs ?? 60_000));
    clearTimeout(this.refreshTimer);
    this.refreshTimer = setTimeout(() => void this.authenticate("refresh", transport), delay);
  }

  /**
   * Exchange the provider's token for a ticket, then open the stream of the subscriptions
   * of that moment with it (unless the client moved on meanwhile). A refused token (401)
   * closes the client, as `4102` does on WebSocket; any other failure reconnects after
   * the backoff.
   */
  private async openTicketed(provider: () => Promise<string>, open: (href: string) => Transport): Promise<void> {
    const attempt = ++this.ticketAttempt;
    this.ticketPending = true;
    let status = 0;
    let body: { ticket?: unknown; code?: unknown } = {};
    let failure = "";
    try {
      const token = await provider();
      const fetcher = this.opts.fetch ?? globalThis.fetch;
      const response = await fetcher(new URL("v1/tickets", this.base).href, {
        method: "POST",
        headers: { Authorization: `Bearer ${token}` },
      });
      status = response.status;
      body = (await response.json()) as typeof body;
    } catch (err) {
      failure = String(err);
    }
    if (attempt !== this.ticketAttempt || this._state === "closed") return;
    this.ticketPending = false;
    const url = this.sseUrl();
    if (status === 200 && typeof body.ticket === "string") {
      if (url === null) return; // Everything was unsubscribed meanwhile.
      const href = new URL(url);
      href.searchParams.set("ticket", body.ticket);
      this.transport = open(href.href);
      return;
    }
    const code = typeof body.code === "string" ? body.code : status ? `http_${status}` : "ticket";
    this.emitter.emit("error", { code, message: `no SSE ticket: ${failure || `HTTP ${status}`}` });
    if (status === 401) {
      this.dropTransport();
      this.setState("closed", { reason: `token refused (${code})` });
    } else {
      this.scheduleReconnect(`no SSE ticket (${code})`);
    }
  }

  private onSseRetrying(): void {
    // The browser reconnects the stream itself, sending Last-Event-ID; mirror it.
    clearTimeout(this.silenceTimer);
    this.stats.reconnects += 1;
    if (this._state === "open") this.setState("reconnecting", { reason: "stream interrupted", delayMs: 0 });
    if (this._state === "reconnecting") this.setState("connecting");
    this.seenMarkets.clear();
    this.seenEvents.clear();
  }

  private onClosed(info: { code: number; reason: string; opened: boolean; retry: boolean }): void {
    this.transport = null;
    if (!info.retry) {
      this.dropTransport();
      this.emitter.emit("error", {
        code: `close_${info.code}`,
        message: `server closed the connection for good: ${info.reason || info.code}`,
      });
      this.setState("closed", { reason: `closed by server (${info.code})` });
      return;
    }
    if (!info.opened && this.kind === "websocket" && (this.opts.transport ?? "auto") === "auto") {
      this.neverOpened += 1;
      const hasEs = this.opts.EventSource !== undefined || typeof globalThis.EventSource !== "undefined";
      if (this.neverOpened >= (this.opts.fallbackAfter ?? 2) && hasEs) this.kind = "sse";
    }
    this.scheduleReconnect(info.reason || `connection lost (${info.code})`);
  }

  /** Tear the transport down and come back after `delayMs` (default: backoff). */
  private scheduleReconnect(reason: string, delayMs?: number): void {
    if (this._state === "closed") return;
    this.dropTransport();
    const delay = delayMs ?? backoffDelay(this.attempt, this.opts.backoff, this.opts.random);
    this.attempt += 1;
    this.stats.reconnects += 1;
    if (this._state === "reconnecting") {
      clearTimeout(this.reconnectTimer);
    } else {
      this.setState("reconnecting", { delayMs: delay, reason });
    }
    this.reconnectTimer = setTimeout(() => this.open(), delay);
  }

  private dropTransport(): void {
    this.ticketAttempt += 1; // A ticket on its way is for a stream no longer wanted.
    this.ticketPending = false;
    clearTimeout(this.connectTimer);
    clearTimeout(this.silenceTimer);
    clearTimeout(this.refreshTimer);
    for (const timer of this.healTimers.values()) clearTimeout(timer);
    this.healTimers.clear();
    for (const [marketId, heal] of this.heals) {
      if (heal.commandId !== null) this.heals.delete(marketId);
    }
    const t = this.transport;
    this.transport = null;
    t?.close();
  }

  private armSilenceTimer(): void {
    clearTimeout(this.silenceTimer);
    const limit = (this.opts.heartbeatMs ?? 15_000) * (this.opts.deadAfterHeartbeats ?? 2.5);
    this.silenceTimer = setTimeout(() => this.scheduleReconnect("heartbeat timeout"), limit);
  }

  // -- commands -------------------------------------------------------------------------------

  private send(command: ClientCommand): boolean {
    return this.transport?.send(command) ?? false;
  }

  private id(): number {
    return this.nextId++;
  }

  /** On a fresh WebSocket: resume every held book, restore events and lobbies. */
  private sendInitial(): void {
    const positions = [...this.books.values()].map(positionOf);
    const events = [...this.wanted.events.keys()];
    const lobbies = [...this.wanted.lobbies.keys()];
    const bare = [...this.wanted.markets.keys()].filter((m) => !this.books.has(m));
    if (positions.length > 0) {
      const id = this.id();
      this.resumes.set(id, { kind: "connection", markets: positions.map((p) => p.market_id) });
      // Books held across the reconnect stay flagged until the server answers for them.
      for (const p of positions) {
        const book = this.books.get(p.market_id);
        if (book?.syncing) this.heals.set(p.market_id, { commandId: id, acked: false });
      }
      this.send({ type: "resume", id, positions, events, lobbies });
      if (bare.length > 0) this.send({ type: "subscribe", id: this.id(), markets: bare });
    } else if (bare.length + events.length + lobbies.length > 0) {
      this.send({ type: "subscribe", id: this.id(), markets: bare, events, lobbies });
    } else {
      this.confirmed = true; // Nothing to ask: the open connection is confirmation enough.
      this.attempt = 0;
    }
  }

  private onTopicsChanged(command: "subscribe" | "unsubscribe", topics: Record<Kind, string[]>): void {
    if (this.kind === "sse") {
      this.restartSse();
      return;
    }
    if (this._state !== "open") return; // Sent with the resume on the next open.
    const markets = topics.markets;
    const payload = { id: this.id(), markets, events: topics.events, lobbies: topics.lobbies };
    this.send(command === "subscribe" ? { type: "subscribe", ...payload } : { type: "unsubscribe", ...payload, markets });
  }

  private release(topics: Topics): void {
    const dropped: Record<Kind, string[]> = { markets: [], events: [], lobbies: [] };
    for (const kind of ["markets", "events", "lobbies"] as const) {
      for (const id of new Set(topics[kind] ?? [])) {
        const n = this.wanted[kind].get(id) ?? 0;
        if (n <= 1) {
          this.wanted[kind].delete(id);
          if (n === 1) dropped[kind].push(id);
        } else {
          this.wanted[kind].set(id, n - 1);
        }
      }
    }
    if (dropped.markets.length + dropped.events.length + dropped.lobbies.length === 0) return;
    // Markets no longer covered by anything: also name them, since a resume pins each
    // position on the server as an explicit market subscription.
    const orphans: string[] = [];
    for (const book of this.books.values()) {
      if (!this.coversMarket(book)) orphans.push(book.marketId);
    }
    const markets = [...new Set([...dropped.markets, ...orphans])];
    this.onTopicsChanged("unsubscribe", { ...dropped, markets });
    this.purge();
  }

  /** Forget books and events nothing covers any more. */
  private purge(): void {
    for (const book of [...this.books.values()]) {
      if (!this.coversMarket(book)) {
        this.books.delete(book.marketId);
        this.heals.delete(book.marketId);
        this.invalidateLobby(book.sport, book.main);
        this.notify(`m:${book.marketId}`);
      }
    }
    for (const event of [...this.events.values()]) {
      if (!this.coversEvent(event.eventId, event.sport)) {
        this.events.delete(event.eventId);
        this.invalidateLobby(event.sport, true);
        this.notify(`e:${event.eventId}`);
      }
    }
  }

  private sseUrl(): string | null {
    const url = new URL("sse", this.base);
    let any = false;
    for (const kind of ["markets", "events", "lobbies"] as const) {
      const ids = [...this.wanted[kind].keys()];
      if (ids.length > 0) {
        url.searchParams.set(kind, ids.join(","));
        any = true;
      }
    }
    // A stream of the client's own (not the browser's retry) resumes like one: every market
    // the token names and the query still covers continues exactly, or is reset, flagged.
    if (any && this.sseToken !== null) url.searchParams.set("last_event_id", this.sseToken);
    return any ? url.href : null;
  }

  private restartSse(): void {
    // Coalesce the subscriptions of one tick into one new stream.
    if (this.sseRestart) return;
    this.sseRestart = true;
    queueMicrotask(() => {
      this.sseRestart = false;
      if (this._state === "closed" || this.ticketPending) return;
      if (this._state === "connecting" && this.transport === null) {
        this.setState("reconnecting", { delayMs: 0, reason: "subscriptions changed" });
        this.open();
      } else if (this._state !== "reconnecting") {
        this.scheduleReconnect("subscriptions changed", 0);
      }
    });
  }

  // -- messages -------------------------------------------------------------------------------

  private onMessage(message: ServerMessage): void {
    this.stats.messages += 1;
    this.armSilenceTimer();
    switch (message.type) {
      case "snapshot":
        this.onSnapshot(message);
        break;
      case "delta":
        this.onDelta(message);
        break;
      case "event":
        this.onEvent(message);
        break;
      case "ack":
        this.onAck(message);
        break;
      case "error":
        this.onError(message);
        break;
      case "reconnect":
        this.onReconnect(message);
        break;
      case "heartbeat":
        break;
      default:
        break; // A newer server's message type: skip it.
    }
  }

  private confirm(): void {
    if (!this.confirmed) {
      this.confirmed = true;
      this.attempt = 0; // The server answered: the backoff starts again from the bottom.
    }
  }

  private onSnapshot(s: Snapshot): void {
    if (!this.coversMarket({ marketId: s.market_id, eventId: s.event_id, sport: s.sport, main: s.main ?? false })) {
      return; // For a topic released meanwhile.
    }
    if (this.transport?.kind === "sse") this.confirm();
    const previous = this.books.get(s.market_id);
    const checked = checkSnapshot(s);
    if (!checked.ok) {
      // The snapshot is not the book its checksum names: keep nothing of it, ask again.
      this.startHeal(previous ?? fromSnapshot(s), checked.reason);
      return;
    }
    const book = checked.book;
    this.books.set(s.market_id, book);
    this.seenMarkets.add(s.market_id);
    this.endHeal(s.market_id);
    if (s.reset) this.stats.resets += 1;
    if (!previous || previous.main !== book.main) this.invalidateLobby(book.sport, true);
    this.notify(`m:${book.marketId}`);
    this.emitter.emit("book", { book, previous, cause: s.reset ? "reset" : "snapshot" });
    this.emitChanges(previous, book);
  }

  private onDelta(d: Delta): void {
    const book = this.books.get(d.market_id);
    if (!book) return; // Not followed (any more), or its snapshot is still to come.
    this.seenMarkets.add(d.market_id);
    const result = applyDelta(book, d);
    if (!result.ok) {
      if (result.reason === "stale") {
        // Already applied: a duplicate (e.g. history replayed after a newer snapshot).
        this.stats.staleIgnored += 1;
      } else if (result.reason !== "market") {
        this.startHeal(book, result.reason);
      }
      return;
    }
    this.stats.deltasApplied += 1;
    let next = result.book;
    const heal = this.heals.get(d.market_id);
    if (heal && heal.acked) {
      this.endHeal(d.market_id); // The first in-order delta after the server took the resume.
      next = { ...next, syncing: false };
    }
    this.books.set(d.market_id, next);
    if (next.main !== book.main) this.invalidateLobby(next.sport, true); // redefined by the feed
    this.notify(`m:${d.market_id}`);
    this.emitter.emit("book", { book: next, previous: book, cause: "delta" });
    this.emitChanges(book, next);
  }

  private onEvent(e: EventState): void {
    if (!this.coversEvent(e.event_id, e.sport)) return;
    const previous = this.events.get(e.event_id);
    // Event messages are idempotent full states: the latest wins within a connection; the
    // first one on a new connection wins whatever its seq (a restarted server counts anew).
    if (previous && this.seenEvents.has(e.event_id) && e.seq <= previous.seq) return;
    this.seenEvents.add(e.event_id);
    const event = eventView(e, this.now());
    this.events.set(e.event_id, event);
    if (!previous || previous.startTime !== event.startTime) this.invalidateLobby(event.sport, true);
    this.notify(`e:${e.event_id}`);
    this.emitter.emit("event", { event, previous });
  }

  private onAck(ack: Ack): void {
    this.confirm();
    if (typeof ack.id !== "number") return;
    const asked = this.resumes.get(ack.id);
    if (asked === undefined) return;
    this.resumes.delete(ack.id);
    const taken = new Set(ack.markets ?? []);
    for (const marketId of asked.markets) {
      const heal = this.heals.get(marketId);
      if (taken.has(marketId)) {
        if (heal && heal.commandId === ack.id) heal.acked = true;
        continue;
      }
      const book = this.books.get(marketId);
      if (!book) continue;
      if (asked.kind === "gap") {
        // The server did not take the position (it already streams the market to this
        // connection): only a new connection, resumed from the last exact book, heals it.
        this.emitter.emit("resync", { marketId, reason: "resume-refused", position: positionOf(book) });
        this.scheduleReconnect(`resume of ${marketId} refused`, 0);
        return;
      }
      if (!this.seenMarkets.has(marketId)) {
        // After a reconnect the server no longer knows this market (and no event or lobby
        // brought a snapshot of it): it is gone.
        this.books.delete(marketId);
        this.endHeal(marketId);
        this.invalidateLobby(book.sport, book.main);
        this.notify(`m:${marketId}`);
        this.emitter.emit("error", { code: "unknown_market", message: `market ${marketId} is gone` });
      }
    }
  }

  private onError(e: ErrorMessage): void {
    this.confirm();
    this.emitter.emit("error", { code: e.code, message: e.message, id: e.id ?? null });
  }

  private onReconnect(r: Reconnect): void {
    const positions = r.positions ?? [];
    const afterMs = Math.max(0, r.after_ms ?? 0);
    this.emitter.emit("drain", { reason: r.reason, afterMs, positions });
    // The server sends `reconnect` after everything up to `positions`, so the books held now
    // are exactly at those positions; they are what the next `resume` sends.
    for (const p of positions) {
      const book = this.books.get(p.market_id);
      if (book && (book.epoch !== p.epoch || book.seq !== p.seq) && !book.syncing) {
        this.startHeal(book, book.epoch !== p.epoch ? "epoch" : "gap");
      }
    }
    this.scheduleReconnect(`server draining (${r.reason})`, afterMs);
  }

  // -- healing --------------------------------------------------------------------------------

  private startHeal(book: MarketBook, reason: RefusalReason): void {
    if (book.syncing) return; // Already healing; the replay or a snapshot will follow.
    this.stats.gaps += 1;
    // A book that fails its checksum has no position to resume from (the deltas after it
    // would rebuild the same wrong book): an epoch no stream has asks for a fresh snapshot.
    const syncing: MarketBook = { ...book, syncing: true, ...(reason === "checksum" ? { epoch: "" } : {}) };
    this.books.set(book.marketId, syncing);
    this.notify(`m:${book.marketId}`);
    this.emitter.emit("book", { book: syncing, previous: book, cause: "syncing" });
    const position = positionOf(syncing);
    this.emitter.emit("resync", { marketId: book.marketId, reason, position });
    if (this.transport?.kind !== "websocket" || this._state !== "open") {
      // SSE cannot send commands: a new stream brings fresh snapshots.
      if (this.transport?.kind === "sse") this.restartSse();
      return;
    }
    const id = this.id();
    this.resumes.set(id, { kind: "gap", markets: [book.marketId] });
    this.heals.set(book.marketId, { commandId: id, acked: false });
    this.send({ type: "resume", id, positions: [position] });
    const timer = setTimeout(() => {
      if (this.books.get(book.marketId)?.syncing) {
        this.emitter.emit("resync", { marketId: book.marketId, reason: "timeout", position });
        this.scheduleReconnect(`could not heal ${book.marketId}`, 0);
      }
    }, this.opts.resyncTimeoutMs ?? 5_000);
    this.healTimers.set(book.marketId, timer);
  }

  private endHeal(marketId: string): void {
    this.heals.delete(marketId);
    clearTimeout(this.healTimers.get(marketId));
    this.healTimers.delete(marketId);
  }

  // -- typed change events --------------------------------------------------------------------

  private emitChanges(previous: MarketBook | undefined, book: MarketBook): void {
    if (!previous) return;
    const before = new Map(previous.selections.map((s) => [s.selectionId, s]));
    for (const sel of book.selections) {
      const old = before.get(sel.selectionId);
      if (!old || old.price === sel.price) continue;
      let direction: Direction = "none";
      if (old.price !== null && sel.price !== null) {
        const c = compareDecimal(sel.price, old.price);
        if (c === 0) continue; // "2.1" -> "2.10": the same price.
        direction = c > 0 ? "up" : "down";
      }
      this.emitter.emit("price", {
        marketId: book.marketId,
        eventId: book.eventId,
        selectionId: sel.selectionId,
        previous: old.price,
        price: sel.price,
        direction,
        seq: book.seq,
        ts: book.ts,
      });
    }
    if (previous.status !== book.status) {
      const change: MarketStatusChange = {
        marketId: book.marketId,
        eventId: book.eventId,
        previous: previous.status,
        status: book.status,
        reason: book.reason,
        book,
      };
      this.emitter.emit("status", change);
      if (book.status === "suspended") this.emitter.emit("suspended", change);
      if (previous.status === "suspended" && book.status === "open") this.emitter.emit("reopened", change);
      if (book.status === "settled" || book.status === "voided") {
        this.emitter.emit("result", {
          marketId: book.marketId,
          eventId: book.eventId,
          status: book.status,
          winners: book.selections.filter((s) => s.status === "winner").map((s) => s.selectionId),
          selections: book.selections.map((s) => ({ selectionId: s.selectionId, status: s.status })),
          book,
        });
      }
    }
  }

  // -- coverage, lobbies and watchers ---------------------------------------------------------

  private coversMarket(m: { marketId: string; eventId: string; sport: string; main: boolean }): boolean {
    return (
      this.wanted.markets.has(m.marketId) ||
      this.wanted.events.has(m.eventId) ||
      (m.main && this.wanted.lobbies.has(m.sport))
    );
  }

  private coversEvent(eventId: string, sport: string): boolean {
    return this.wanted.events.has(eventId) || this.wanted.lobbies.has(sport);
  }

  private buildLobby(sport: string): LobbyView {
    if (!this.wanted.lobbies.has(sport)) return { sport, events: EMPTY_LOBBY_EVENTS };
    const byEvent = new Map<string, string[]>();
    for (const book of this.books.values()) {
      if (book.sport !== sport || !book.main) continue;
      const list = byEvent.get(book.eventId);
      if (list) list.push(book.marketId);
      else byEvent.set(book.eventId, [book.marketId]);
    }
    const entries: LobbyEntry[] = [];
    for (const event of this.events.values()) {
      if (event.sport !== sport) continue;
      entries.push({ eventId: event.eventId, startTime: event.startTime, marketIds: byEvent.get(event.eventId) ?? [] });
    }
    entries.sort((a, b) => a.startTime - b.startTime || (a.eventId < b.eventId ? -1 : 1));
    return { sport, events: entries };
  }

  private invalidateLobby(sport: string, relevant: boolean): void {
    if (!relevant) return;
    this.lobbies.delete(sport);
    this.notify(`l:${sport}`);
  }

  private watch(key: string, fn: () => void): () => void {
    let set = this.watchers.get(key);
    if (!set) this.watchers.set(key, (set = new Set()));
    set.add(fn);
    return () => {
      set.delete(fn);
      if (set.size === 0) this.watchers.delete(key);
    };
  }

  private notify(key: string): void {
    const set = this.watchers.get(key);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn();
      } catch (err) {
        reportListenerError(err);
      }
    }
  }

  private now(): number {
    return (this.opts.now ?? Date.now)();
  }
}

/** Create a client (connects at once unless `autoConnect: false`). */
export function createClient(options: ClientOptions = {}): OddsClient {
  return new OddsClient(options);
}
