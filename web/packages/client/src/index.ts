export * from "./client.js";
export * from "./book.js";
export * from "./price.js";
export * from "./backoff.js";
export * from "./shared.js";
export {
  SUBPROTOCOL,
  isFatalClose,
  type TransportKind,
  type WebSocketLike,
  type WebSocketConstructor,
  type EventSourceLike,
  type EventSourceConstructor,
} from "./transport.js";
export type * as wire from "./generated/protocol.js";
export { serverMessageTypes, clientCommandTypes } from "./generated/protocol.js";
