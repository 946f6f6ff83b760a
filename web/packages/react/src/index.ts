/**
 * React bindings for @oddstream/client: hooks over one shared client, built on
 * `useSyncExternalStore`, so a component re-renders exactly when its market, event or
 * lobby changes (books are immutable: a new object per change).
 */
import {
  createContext,
  createElement,
  useCallback,
  useContext,
  useEffect,
  useSyncExternalStore,
  type ReactNode,
} from "react";
import type { ConnectionState, EventView, LobbyView, MarketBook, OddsClient } from "@oddstream/client";

const ClientContext = createContext<OddsClient | null>(null);

export function OddsProvider(props: { client: OddsClient; children?: ReactNode }): ReactNode {
  return createElement(ClientContext.Provider, { value: props.client }, props.children);
}

export function useOddsClient(): OddsClient {
  const client = useContext(ClientContext);
  if (!client) throw new Error("useOddsClient: wrap the tree in <OddsProvider client={...}>");
  return client;
}

export interface HookOptions {
  /**
   * Subscribe to the topic for as long as the component is mounted (default true). Pass
   * false to read a market that another subscription (its event or lobby) already covers.
   */
  readonly subscribe?: boolean;
  /**
   * useMarket only: re-render at most once per display frame (requestAnimationFrame) with
   * the latest book, however many deltas arrived in between (default false: every change).
   * For busy exchange markets, whose ladders move many times a second.
   */
  readonly perFrame?: boolean;
}

/** `notify` deferred to the next animation frame, coalesced: many calls, one frame. */
function perFrame(watch: (notify: () => void) => () => void): (notify: () => void) => () => void {
  return (notify) => {
    let frame = 0;
    const stop = watch(() => {
      frame ||= requestAnimationFrame(() => {
        frame = 0;
        notify();
      });
    });
    return () => {
      stop();
      cancelAnimationFrame(frame);
    };
  };
}

function useTopic(client: OddsClient, kind: "markets" | "events" | "lobbies", id: string | undefined, on: boolean): void {
  useEffect(() => {
    if (!on || id === undefined) return undefined;
    return client.subscribe({ [kind]: [id] });
  }, [client, kind, id, on]);
}

/** The live book of a market (undefined until its snapshot arrives). */
export function useMarket(marketId: string | undefined, options: HookOptions = {}): MarketBook | undefined {
  const client = useOddsClient();
  useTopic(client, "markets", marketId, options.subscribe ?? true);
  const framed = options.perFrame ?? false;
  const subscribe = useCallback(
    (onChange: () => void) => {
      if (marketId === undefined) return () => {};
      const watch = (notify: () => void): (() => void) => client.watchMarket(marketId, notify);
      return (framed ? perFrame(watch) : watch)(onChange);
    },
    [client, marketId, framed],
  );
  const get = (): MarketBook | undefined => (marketId === undefined ? undefined : client.getMarket(marketId));
  return useSyncExternalStore(subscribe, get, get);
}

/** The live state of an event: score, clock, phase (undefined until it arrives). */
export function useEvent(eventId: string | undefined, options: HookOptions = {}): EventView | undefined {
  const client = useOddsClient();
  useTopic(client, "events", eventId, options.subscribe ?? true);
  const subscribe = useCallback(
    (onChange: () => void) => (eventId === undefined ? () => {} : client.watchEvent(eventId, onChange)),
    [client, eventId],
  );
  const get = (): EventView | undefined => (eventId === undefined ? undefined : client.getEvent(eventId));
  return useSyncExternalStore(subscribe, get, get);
}

/** A sport's lobby: its events and main markets; changes only when membership changes. */
export function useLobby(sport: string, options: HookOptions = {}): LobbyView {
  const client = useOddsClient();
  useTopic(client, "lobbies", sport, options.subscribe ?? true);
  const subscribe = useCallback((onChange: () => void) => client.watchLobby(sport, onChange), [client, sport]);
  const get = (): LobbyView => client.getLobby(sport);
  return useSyncExternalStore(subscribe, get, get);
}

/** The connection state (connecting, open, reconnecting, closed). */
export function useConnectionState(): ConnectionState {
  const client = useOddsClient();
  const subscribe = useCallback((onChange: () => void) => client.watchState(onChange), [client]);
  const get = (): ConnectionState => client.state;
  return useSyncExternalStore(subscribe, get, get);
}
