/**
 * Transports behind one small interface: a WebSocket (commands both ways) and Server-Sent
 * Events (read-only; the subscription is in the URL). Both hand decoded JSON messages up
 * one at a time and report one `closed` at most; after `close()` they report nothing at all.
 *
 * A WebSocket opened with `?batch=1` (see `ClientOptions.batch`) receives every WebSocket
 * message as a JSON array of one or more server messages; the decoder accepts either shape
 * and the transport hands the elements up one by one, in order, exactly as if they had
 * arrived unbatched.
 */
import { serverMessageTypes, type ClientCommand, type ServerMessage } from "./generated/protocol.js";

export const SUBPROTOCOL = "oddstream.v1.json";

/** The part of the browser `WebSocket` the client uses (tests inject a fake). */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

/** The part of the browser `EventSource` the client uses. */
export interface EventSourceLike {
  readonly readyState: number;
  onopen: ((ev: unknown) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  /** `lastEventId`: the stream's last `id:` so far (the resume token), "" before any. */
  addEventListener(type: string, listener: (ev: { data: string; lastEventId?: string }) => void): void;
  close(): void;
}
export type EventSourceConstructor = new (url: string) => EventSourceLike;

export type TransportKind = "websocket" | "sse";

export interface TransportHandler {
  opened(): void;
  message(message: ServerMessage): void;
  /** The transport is gone; `retry` is false for a "do not retry" close (4100-4199). */
  closed(info: { code: number; reason: string; opened: boolean; retry: boolean }): void;
  /** SSE only: the browser is reconnecting by itself (it will send Last-Event-ID). */
  retrying?(): void;
  /** SSE only: the resume token (`id:`) of the event just handed up. */
  token?(token: string): void;
}

export interface Transport {
  readonly kind: TransportKind;
  /** False when the transport cannot carry commands (SSE) or is not open. */
  send(command: ClientCommand): boolean;
  close(): void;
}

function isMessage(value: unknown): value is ServerMessage {
  return (
    typeof value === "object" &&
    value !== null &&
    !Array.isArray(value) &&
    typeof (value as { type?: unknown }).type === "string"
  );
}

function parse(data: unknown): unknown {
  if (typeof data !== "string") return undefined;
  try {
    return JSON.parse(data) as unknown;
  } catch {
    // A frame that is not JSON is skipped like an unknown type: the protocol only grows.
    return undefined;
  }
}

/** One server message (SSE: each event carries exactly one). */
function decode(data: unknown): ServerMessage | undefined {
  const value = parse(data);
  return isMessage(value) ? value : undefined;
}

/**
 * The server messages in one WebSocket message, in order: a single message object, or a
 * batch (`?batch=1`): an array of them. An element that is not a message is skipped, just
 * as an invalid unbatched message is; the rest of its batch still counts.
 */
export function decodeMessages(data: unknown): ServerMessage[] {
  const value = parse(data);
  if (Array.isArray(value)) return value.filter(isMessage);
  return isMessage(value) ? [value] : [];
}

/** Close codes 4100-4199 mean "do not retry the same request". */
export function isFatalClose(code: number): boolean {
  return code >= 4100 && code < 4200;
}

export function openWebSocket(
  Ctor: WebSocketConstructor,
  url: string,
  handler: TransportHandler,
): Transport {
  const ws = new Ctor(url, [SUBPROTOCOL]);
  let opened = false;
  let done = false;
  const finish = (code: number, reason: string): void => {
    if (done) return;
    done = true;
    handler.closed({ code, reason, opened, retry: !isFatalClose(code) });
  };
  ws.onopen = () => {
    if (done) return;
    opened = true;
    handler.opened();
  };
  ws.onmessage = (ev) => {
    for (const message of decodeMessages(ev.data)) {
      // A message may end the transport (e.g. `reconnect`): the rest of its batch is then
      // dropped, as unbatched messages arriving after `close()` would be.
      if (done) return;
      handler.message(message);
    }
  };
  ws.onclose = (ev) => finish(ev.code, ev.reason);
  ws.onerror = () => {
    // A close event follows an error; it carries the code.
  };
  return {
    kind: "websocket",
    send(command) {
      if (done || !opened || ws.readyState !== 1) return false;
      ws.send(JSON.stringify(command));
      return true;
    },
    close() {
      if (done) return;
      done = true;
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try {
        ws.close(1000, "client closing");
      } catch {
        // Closing a socket that is still connecting throws in some browsers; it is gone anyway.
      }
    },
  };
}

/**
 * An SSE stream. The browser's own reconnection is kept because it sends `Last-Event-ID`
 * (the server resumes from it); `maxNativeRetries` consecutive failed retries, or a stream
 * the browser gave up on, end the transport so the client can back off and start afresh.
 */
export function openEventSource(
  Ctor: EventSourceConstructor,
  url: string,
  handler: TransportHandler,
  maxNativeRetries = 3,
): Transport {
  const es = new Ctor(url);
  let opened = false;
  let done = false;
  let retries = 0;
  const finish = (reason: string): void => {
    if (done) return;
    done = true;
    es.onopen = es.onerror = null;
    es.close();
    handler.closed({ code: 1006, reason, opened, retry: true });
  };
  es.onopen = () => {
    if (done) return;
    retries = 0;
    opened = true;
    handler.opened();
  };
  es.onerror = () => {
    if (done) return;
    // readyState 0: the browser retries by itself; 2: it gave up (HTTP error, bad type).
    if (es.readyState === 0 && retries < maxNativeRetries) {
      retries += 1;
      handler.retrying?.();
    } else {
      finish(es.readyState === 0 ? "stream retries exhausted" : "stream closed");
    }
  };
  for (const type of serverMessageTypes) {
    es.addEventListener(type, (ev) => {
      if (done) return;
      const message = decode(ev.data);
      if (!message) return;
      // The token first: it covers this message, which the handler may act on at once.
      if (ev.lastEventId) handler.token?.(ev.lastEventId);
      handler.message(message);
    });
  }
  return {
    kind: "sse",
    send() {
      return false;
    },
    close() {
      if (done) return;
      done = true;
      es.onopen = es.onerror = null;
      es.close();
    },
  };
}
