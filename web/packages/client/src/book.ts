/**
 * Client-side market books: the same rules as the server's `protocol.apply` (Python): a
 * delta applies only to the same market and epoch at exactly `seq + 1`, and only when the
 * book after it has the delta's `crc` (the book checksum, when sent); anything else is a
 * refusal that the caller heals with a fresh snapshot or a resume, never a guess.
 * `tests/data/conformance` holds the cases every implementation of these rules passes.
 */
import type {
  DecimalString,
  Delta,
  EventState,
  Selection,
  SelectionChange,
  Snapshot,
} from "./generated/protocol.js";

export type MarketStatus = Snapshot["status"];
export type SelectionStatus = NonNullable<Selection["status"]>;
export type EventPhase = EventState["phase"];

/** A price level of an exchange ladder: [price, size], exact decimal strings. */
export type Level = readonly [DecimalString, DecimalString];

export interface SelectionView {
  readonly selectionId: string;
  readonly name: string;
  /** Decimal odds exactly as sent, or null when the selection has no price. */
  readonly price: DecimalString | null;
  readonly status: SelectionStatus;
  /** Exchange fields (absent from a bookmaker feed): best back/lay levels, best first. */
  readonly back: readonly Level[];
  readonly lay: readonly Level[];
  /** Last traded price, traded volume, Betfair starting price. */
  readonly ltp: DecimalString | null;
  readonly volume: DecimalString | null;
  readonly bsp: DecimalString | null;
  /** Removal: reduction factor applied to the others' prices, and when (ms). */
  readonly adjustment: DecimalString | null;
  readonly removedAt: number | null;
  /** Settlement: dead-heat factor of a winner, part of the stake refunded. */
  readonly deadHeat: DecimalString | null;
  readonly voidFactor: DecimalString | null;
}

/** An immutable book of one market; a new object after every change. */
export interface MarketBook {
  readonly marketId: string;
  readonly eventId: string;
  readonly seq: number;
  readonly epoch: string;
  /** Feed timestamp (ms) of the last update the book reflects. */
  readonly ts: number;
  readonly sport: string;
  readonly kind: string;
  readonly name: string;
  readonly status: MarketStatus;
  readonly reason: string | null;
  readonly main: boolean;
  /** The market's traded volume, on an exchange. */
  readonly volume: DecimalString | null;
  readonly selections: readonly SelectionView[];
  /**
   * True while the client is healing a gap: the book is the last one known to be exact,
   * but newer changes are missing. Show it as unavailable, never as current.
   */
  readonly syncing: boolean;
}

export type RefusalReason = "market" | "epoch" | "stale" | "gap" | "checksum";

export type ApplyResult =
  | { readonly ok: true; readonly book: MarketBook }
  | { readonly ok: false; readonly reason: RefusalReason };

export function fromSnapshot(s: Snapshot): MarketBook {
  return {
    marketId: s.market_id,
    eventId: s.event_id,
    seq: s.seq,
    epoch: s.epoch,
    ts: s.ts,
    sport: s.sport,
    kind: s.kind,
    name: s.name,
    status: s.status,
    reason: s.reason ?? null,
    main: s.main ?? false,
    volume: s.volume ?? null,
    selections: s.selections.map(selectionView),
    syncing: false,
  };
}

function selectionView(s: Selection): SelectionView {
  return {
    selectionId: s.selection_id,
    name: s.name,
    price: s.price ?? null,
    status: s.status ?? "active",
    back: s.back ?? [],
    lay: s.lay ?? [],
    ltp: s.ltp ?? null,
    volume: s.volume ?? null,
    bsp: s.bsp ?? null,
    adjustment: s.adjustment ?? null,
    removedAt: s.removed_at ?? null,
    deadHeat: s.dead_heat ?? null,
    voidFactor: s.void_factor ?? null,
  };
}

/** The book of snapshot `s`, or `checksum` when `s` carries a `crc` its book does not have. */
export function checkSnapshot(s: Snapshot): ApplyResult {
  const book = fromSnapshot(s);
  return s.crc == null || checksum(book) === s.crc ? { ok: true, book } : { ok: false, reason: "checksum" };
}

/** Check `delta` against `book` and return the next book, or why it does not apply. */
export function applyDelta(book: MarketBook, delta: Delta): ApplyResult {
  if (delta.market_id !== book.marketId) return { ok: false, reason: "market" };
  if (delta.epoch !== book.epoch) return { ok: false, reason: "epoch" };
  if (delta.seq <= book.seq) return { ok: false, reason: "stale" };
  if (delta.seq !== book.seq + 1) return { ok: false, reason: "gap" };
  const next: MarketBook = {
    ...book,
    seq: delta.seq,
    ts: delta.ts,
    name: delta.name ?? book.name,
    main: delta.main ?? book.main,
    volume: delta.volume === undefined ? book.volume : delta.volume,
    status: delta.status ?? book.status,
    reason: delta.reason === undefined ? book.reason : delta.reason,
    selections: applySelectionChanges(book.selections, delta.selections ?? []),
  };
  if (delta.crc != null && checksum(next) !== delta.crc) return { ok: false, reason: "checksum" };
  return { ok: true, book: next };
}

/**
 * The canonical text of a book's checksum (docs/protocol.md, "Book checksum"): the market's
 * status, then per selection `\n<id>|<status>|<price>|<back>|<lay>`, a ladder side being its
 * levels `<price>@<size>` joined by `,`; decimals exactly as sent.
 */
export function canonicalText(book: Pick<MarketBook, "status" | "selections">): string {
  let text = book.status;
  for (const s of book.selections) {
    text += `\n${s.selectionId}|${s.status}|${s.price ?? ""}|${levelsText(s.back)}|${levelsText(s.lay)}`;
  }
  return text;
}

function levelsText(levels: readonly Level[]): string {
  return levels.map(([price, size]) => `${price}@${size}`).join(",");
}

/** The book checksum: CRC-32 (ISO-HDLC, as zlib) of the canonical text's UTF-8 bytes. */
export function checksum(book: Pick<MarketBook, "status" | "selections">): number {
  return crc32(UTF8.encode(canonicalText(book)));
}

const UTF8 = new TextEncoder();

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

/** CRC-32 of `bytes` (reflected, polynomial 0xEDB88320), as an unsigned integer. */
export function crc32(bytes: Uint8Array): number {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** Merge selection changes, keeping order; a selection never seen before is appended. */
export function applySelectionChanges(
  selections: readonly SelectionView[],
  changes: readonly SelectionChange[],
): readonly SelectionView[] {
  if (changes.length === 0) return selections;
  const byId = new Map(changes.map((c) => [c.selection_id, c]));
  const out: SelectionView[] = selections.map((sel) => {
    const change = byId.get(sel.selectionId);
    if (change === undefined) return sel;
    byId.delete(sel.selectionId);
    return merge(sel, change);
  });
  for (const change of byId.values()) {
    const base = selectionView({ selection_id: change.selection_id, name: change.selection_id });
    out.push(merge(base, change));
  }
  return out;
}

/** Absent: unchanged; `null`: cleared; `back`/`lay` are replaced whole. */
function pick<T>(next: T | null | undefined, current: T | null): T | null {
  return next === undefined ? current : next;
}

function merge(sel: SelectionView, change: SelectionChange): SelectionView {
  return {
    selectionId: sel.selectionId,
    name: change.name ?? sel.name,
    price: pick(change.price, sel.price),
    status: change.status ?? sel.status,
    back: change.back ?? sel.back,
    lay: change.lay ?? sel.lay,
    ltp: pick(change.ltp, sel.ltp),
    volume: pick(change.volume, sel.volume),
    bsp: pick(change.bsp, sel.bsp),
    adjustment: pick(change.adjustment, sel.adjustment),
    removedAt: pick(change.removed_at, sel.removedAt),
    deadHeat: pick(change.dead_heat, sel.deadHeat),
    voidFactor: pick(change.void_factor, sel.voidFactor),
  };
}

/** The wire position of a book, for `resume`. */
export function positionOf(book: MarketBook): { market_id: string; epoch: string; seq: number } {
  return { market_id: book.marketId, epoch: book.epoch, seq: book.seq };
}

export interface ClockView {
  readonly period: string;
  readonly seconds: number;
  readonly running: boolean;
}

/** The state of a match; a new object after every change. */
export interface EventView {
  readonly eventId: string;
  readonly seq: number;
  readonly ts: number;
  readonly sport: string;
  readonly competition: string;
  readonly name: string;
  readonly home: string;
  readonly away: string;
  readonly startTime: number;
  readonly phase: EventPhase;
  readonly score: readonly [number, number];
  readonly clock: ClockView | null;
  /** Local time (ms) the message arrived: a running clock advances from here. */
  readonly receivedAt: number;
}

export function eventView(e: EventState, receivedAt: number): EventView {
  return {
    eventId: e.event_id,
    seq: e.seq,
    ts: e.ts,
    sport: e.sport,
    competition: e.competition,
    name: e.name,
    home: e.home,
    away: e.away,
    startTime: e.start_time,
    phase: e.phase,
    score: e.score ?? [0, 0],
    clock: e.clock
      ? { period: e.clock.period, seconds: e.clock.seconds ?? 0, running: e.clock.running ?? false }
      : null,
    receivedAt,
  };
}

/** The clock's seconds at local time `now`, advancing a running clock since it arrived. */
export function clockSecondsAt(event: EventView, now: number): number | null {
  const c = event.clock;
  if (!c) return null;
  return c.running ? c.seconds + Math.max(0, Math.floor((now - event.receivedAt) / 1000)) : c.seconds;
}
