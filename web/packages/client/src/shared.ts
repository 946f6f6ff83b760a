/**
 * Sharing one client between independently built micro-frontends on one page: the shell
 * registers it under a global symbol, the micro-frontends look it up (or wait for it). The
 * registry lives on `globalThis`, so it works even when two bundles each carry this module.
 */
import type { OddsClient } from "./client.js";

const KEY = Symbol.for("oddstream.client");
const READY_EVENT = "oddstream:client-ready";

type Registry = { [KEY]?: OddsClient };

export function registerSharedClient(client: OddsClient): void {
  (globalThis as Registry)[KEY] = client;
  if (typeof dispatchEvent === "function" && typeof CustomEvent === "function") {
    dispatchEvent(new CustomEvent(READY_EVENT));
  }
}

export function getSharedClient(): OddsClient | undefined {
  return (globalThis as Registry)[KEY];
}

/** Resolves with the shared client as soon as the shell registered it. */
export function whenSharedClient(): Promise<OddsClient> {
  const client = getSharedClient();
  if (client) return Promise.resolve(client);
  return new Promise((resolve) => {
    const onReady = (): void => {
      const c = getSharedClient();
      if (c) {
        removeEventListener(READY_EVENT, onReady);
        resolve(c);
      }
    };
    addEventListener(READY_EVENT, onReady);
  });
}

/** The page-level bus between micro-frontends: a selection picked on the board. */
export const SELECTION_PICKED = "oddstream:selection-picked";

export interface SelectionPick {
  readonly marketId: string;
  readonly selectionId: string;
  /** The price the user saw when picking (decimal string), or null. */
  readonly price: string | null;
  readonly label: string;
  readonly marketName: string;
  readonly eventName: string;
}

export function pickSelection(pick: SelectionPick, target: EventTarget = globalThis as unknown as EventTarget): void {
  target.dispatchEvent(new CustomEvent<SelectionPick>(SELECTION_PICKED, { detail: pick }));
}

export function onSelectionPicked(
  listener: (pick: SelectionPick) => void,
  target: EventTarget = globalThis as unknown as EventTarget,
): () => void {
  const handler = (ev: Event): void => listener((ev as CustomEvent<SelectionPick>).detail);
  target.addEventListener(SELECTION_PICKED, handler);
  return () => target.removeEventListener(SELECTION_PICKED, handler);
}
