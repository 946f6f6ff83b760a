import { Injectable, signal, type Signal } from "@angular/core";
import { BehaviorSubject, Observable, filter, switchMap } from "rxjs";
import type {
  ConnectionState,
  MarketBook,
  OddsClient,
  PriceChange,
  MarketStatusChange,
} from "@oddstream/client";

interface Follow {
  count: number;
  detach: (() => void) | null;
}

/**
 * The page's shared oddstream client as RxJS observables and Angular signals. The host hands
 * the client in with `setClient`; until then observables simply wait.
 */
@Injectable({ providedIn: "root" })
export class OddsService {
  private client: OddsClient | null = null;
  private readonly client$ = new BehaviorSubject<OddsClient | null>(null);
  private readonly follows = new Map<string, Follow>();
  private detachState: (() => void) | null = null;

  private readonly _state = signal<ConnectionState>("connecting");
  private readonly _books = signal<ReadonlyMap<string, MarketBook>>(new Map());

  /** The connection state, as a signal. */
  readonly state: Signal<ConnectionState> = this._state.asReadonly();
  /** The books of every followed market (see `follow`), as a signal. */
  readonly books: Signal<ReadonlyMap<string, MarketBook>> = this._books.asReadonly();

  setClient(client: OddsClient | null): void {
    if (client === this.client) return;
    this.detachState?.();
    for (const f of this.follows.values()) {
      f.detach?.();
      f.detach = null;
    }
    this.client = client;
    this.client$.next(client);
    if (!client) return;
    this._state.set(client.state);
    this.detachState = client.watchState(() => this._state.set(client.state));
    for (const id of this.follows.keys()) this.attach(id);
  }

  /** The connection state, as an observable. */
  readonly state$: Observable<ConnectionState> = this.withClient(
    (c) =>
      new Observable<ConnectionState>((sub) => {
        sub.next(c.state);
        return c.watchState(() => sub.next(c.state));
      }),
  );

  /** A market's live book; subscribes the market while observed. */
  market$(marketId: string): Observable<MarketBook | undefined> {
    return this.withClient(
      (c) =>
        new Observable<MarketBook | undefined>((sub) => {
          const release = c.subscribe({ markets: [marketId] });
          const unwatch = c.watchMarket(marketId, () => sub.next(c.getMarket(marketId)));
          sub.next(c.getMarket(marketId));
          return () => {
            unwatch();
            release();
          };
        }),
    );
  }

  /** Every price change on the connection. */
  readonly prices$: Observable<PriceChange> = this.withClient(
    (c) => new Observable<PriceChange>((sub) => c.on("price", (p) => sub.next(p))),
  );

  /** Every market status change (suspensions, reopenings, settlements). */
  readonly statuses$: Observable<MarketStatusChange> = this.withClient(
    (c) => new Observable<MarketStatusChange>((sub) => c.on("status", (s) => sub.next(s))),
  );

  /** Keep a market subscribed and mirrored in `books()` until the returned function runs. */
  follow(marketId: string): () => void {
    const f = this.follows.get(marketId);
    if (f) f.count += 1;
    else {
      this.follows.set(marketId, { count: 1, detach: null });
      this.attach(marketId);
    }
    let done = false;
    return () => {
      if (done) return;
      done = true;
      const cur = this.follows.get(marketId);
      if (!cur) return;
      cur.count -= 1;
      if (cur.count > 0) return;
      cur.detach?.();
      this.follows.delete(marketId);
      this._books.update((m) => {
        const next = new Map(m);
        next.delete(marketId);
        return next;
      });
    };
  }

  private attach(marketId: string): void {
    const c = this.client;
    const f = this.follows.get(marketId);
    if (!c || !f) return;
    const sync = (): void => {
      const book = c.getMarket(marketId);
      this._books.update((m) => {
        if (m.get(marketId) === book) return m;
        const next = new Map(m);
        if (book) next.set(marketId, book);
        else next.delete(marketId);
        return next;
      });
    };
    const release = c.subscribe({ markets: [marketId] });
    const unwatch = c.watchMarket(marketId, sync);
    sync();
    f.detach = () => {
      unwatch();
      release();
    };
  }

  private withClient<T>(fn: (c: OddsClient) => Observable<T>): Observable<T> {
    return this.client$.pipe(
      filter((c): c is OddsClient => c !== null),
      switchMap(fn),
    );
  }
}
