/**
 * The exchange ladder of one market: per runner three levels of back and of lay (price and
 * size, best nearest the middle), depth bars, last traded price with its direction, traded
 * volume; suspended / closed / settled states; removed runners with their adjustment factor.
 *
 * The board hands it the book once per display frame (`useMarket(..., { perFrame: true })`),
 * and it is memoised down to the cell: a runner whose selection object did not change is not
 * rendered again, and a cell whose price and size did not change keeps its DOM untouched.
 * A move is shown by an arrow and a word for assistive technology, never by colour alone.
 */
import { memo, useCallback, useEffect, useRef, useState } from "react";
import {
  compareDecimal,
  formatPrice,
  pickSelection,
  type EventView,
  type Level,
  type MarketBook,
  type PriceFormat,
  type SelectionView,
} from "@oddstream/client";
import { moveArrow, moveWord } from "../../common/announce.js";

const DEPTH = 3;
const MOVE_MS = 1500;

type Move = "up" | "down" | null;

/** The direction of the last change of `value`, shown for `MOVE_MS` after it. */
function useMove(value: string | null): Move {
  const previous = useRef(value);
  const [move, setMove] = useState<Move>(null);
  useEffect(() => {
    const before = previous.current;
    previous.current = value;
    if (before === null || value === null || before === value) return undefined;
    const c = compareDecimal(value, before);
    if (c === 0) return undefined;
    setMove(c > 0 ? "up" : "down");
    const t = setTimeout(() => setMove(null), MOVE_MS);
    return () => clearTimeout(t);
  }, [value]);
  return move;
}

/**
 * The depth bars' scale: the next power of ten above the market's largest size, so a bar is
 * comparable across runners and the scale (and every bar) changes rarely, not on each update.
 */
function scaleOf(book: MarketBook): number {
  let max = 1;
  for (const sel of book.selections) {
    for (const [, size] of [...sel.back, ...sel.lay]) max = Math.max(max, Number(size));
  }
  return 10 ** Math.ceil(Math.log10(max));
}

/** Whole units with thousands separators: "£12,345" style without the currency. */
function amount(value: string | null): string {
  if (value === null) return "–";
  const n = Number(value);
  return Number.isFinite(n) ? Math.round(n).toLocaleString("en-GB") : value;
}

/** Whether a market carries exchange data (ladders or traded prices) worth a ladder view. */
export function hasLadder(book: MarketBook): boolean {
  return book.selections.some((s) => s.back.length > 0 || s.lay.length > 0 || s.ltp !== null);
}

export function Ladder(props: { book: MarketBook; event: EventView; format: PriceFormat }) {
  const { book } = props;
  const open = book.status === "open" && !book.syncing;
  const scale = scaleOf(book);
  const state = book.syncing ? "Updating" : statusLabel(book);
  return (
    <div className="ladder" data-market-id={book.marketId} data-status={book.status} data-seq={book.seq} data-epoch={book.epoch}>
      <div className="ladder-head">
        <span className="ladder-name">{book.name}</span>
        {state ? (
          <span className="state-badge" data-testid="market-state" role="status">
            {state}
          </span>
        ) : null}
        <span className="spacer" />
        <span className="matched" data-testid="market-volume">
          Matched {amount(book.volume)}
        </span>
      </div>
      <table>
        <caption className="sr">
          {book.name}: back and lay prices with available amounts, last traded price and matched volume per runner
        </caption>
        <thead>
          <tr>
            <th scope="col">Runner</th>
            <th scope="col" colSpan={DEPTH} className="back-h">
              Back
            </th>
            <th scope="col" colSpan={DEPTH} className="lay-h">
              Lay
            </th>
            <th scope="col">Last</th>
            <th scope="col">Matched</th>
          </tr>
        </thead>
        <tbody>
          {book.selections.map((sel) => (
            <Runner key={sel.selectionId} sel={sel} book={book} open={open} scale={scale} event={props.event} format={props.format} />
          ))}
        </tbody>
      </table>
    </div>
  );
}

function statusLabel(book: MarketBook): string {
  switch (book.status) {
    case "open":
      return "";
    case "suspended":
      return book.reason ? `Suspended · ${book.reason}` : "Suspended";
    case "closed":
      return "Closed";
    case "settled":
      return "Settled";
    case "voided":
      return "Void";
  }
}

interface RunnerProps {
  sel: SelectionView;
  book: MarketBook;
  open: boolean;
  scale: number;
  event: EventView;
  format: PriceFormat;
}

/** One runner's row; re-rendered only when its selection, the market's state or the scale change. */
const Runner = memo(
  function Runner({ sel, book, open, scale, event, format }: RunnerProps) {
    const ltpMove = useMove(sel.ltp);
    const removed = sel.status === "removed";
    const result = sel.status === "winner" ? "Winner" : sel.status === "loser" ? "Loser" : sel.status === "void" ? "Void" : "";
    // One stable callback for the row's cells (so they stay memoised), reading the latest names.
    const latest = useRef({ sel, book, event });
    latest.current = { sel, book, event };
    const pick = useCallback((price: string | null): void => {
      const { sel: s, book: b, event: e } = latest.current;
      pickSelection({ marketId: b.marketId, selectionId: s.selectionId, price, label: s.name, marketName: b.name, eventName: e.name });
    }, []);
    const back = removed ? [] : sel.back;
    const lay = removed ? [] : sel.lay;
    return (
      <tr className={removed ? "runner removed" : "runner"} data-selection-id={sel.selectionId} data-status={sel.status} data-price={sel.price ?? ""}>
        <th scope="row" className="runner-name">
          <span className="nm">{sel.name}</span>
          {removed ? (
            <span className="note" data-testid="removed">
              Removed{sel.adjustment !== null ? ` · adj. ${sel.adjustment}%` : ""}
            </span>
          ) : result ? (
            <span className={`note ${sel.status}`}>{result}</span>
          ) : null}
        </th>
        {[2, 1, 0].map((i) => (
          <Cell key={`b${i}`} side="back" level={back[i]} best={i === 0} scale={scale} format={format} enabled={open && !removed && i === 0} onPick={pick} />
        ))}
        {[0, 1, 2].map((i) => (
          <Cell key={`l${i}`} side="lay" level={lay[i]} best={i === 0} scale={scale} format={format} enabled={false} onPick={pick} />
        ))}
        <td className="ltp" data-ltp={sel.ltp ?? ""} data-move={ltpMove ?? ""}>
          {sel.ltp !== null ? formatPrice(sel.ltp, format) : "–"}
          <span className="dir" aria-hidden="true">
            {moveArrow(ltpMove)}
          </span>
          {ltpMove ? <span className="sr"> ({moveWord(ltpMove)})</span> : null}
        </td>
        <td className="vol">{amount(sel.volume)}</td>
      </tr>
    );
  },
  (a, b) => a.sel === b.sel && a.open === b.open && a.scale === b.scale && a.format === b.format && a.book.marketId === b.book.marketId,
);

interface CellProps {
  side: "back" | "lay";
  level: Level | undefined;
  best: boolean;
  scale: number;
  format: PriceFormat;
  enabled: boolean;
  onPick: (price: string | null) => void;
}

/** One level: price over size, with a depth bar. The best back level is a button that puts
 * the runner on the bet slip at that price (the slip takes back bets only). */
const Cell = memo(
  function Cell({ side, level, best, scale, format, enabled, onPick }: CellProps) {
    const price = level?.[0] ?? null;
    const move = useMove(best ? price : null);
    const depth = level ? Math.min(100, (Number(level[1]) / scale) * 100) : 0;
    const body = (
      <>
        <span className="bar" style={{ width: `${depth.toFixed(1)}%` }} />
        <span className="p">
          {price !== null ? formatPrice(price, format) : ""}
          {move ? (
            <>
              <span className="dir" aria-hidden="true">
                {moveArrow(move)}
              </span>
              <span className="sr"> ({moveWord(move)})</span>
            </>
          ) : null}
        </span>
        <span className="s">{level ? amount(level[1]) : ""}</span>
      </>
    );
    const className = `cell ${side}${best ? " best" : ""}`;
    return (
      <td className={className} data-price={price ?? ""} data-size={level?.[1] ?? ""} data-move={move ?? ""}>
        {best && side === "back" ? (
          <button type="button" className="pick" disabled={!enabled || price === null} onClick={() => onPick(price)}
            aria-label={price !== null ? `Back at ${price}, ${amount(level?.[1] ?? null)} available` : "No back price"}>
            {body}
          </button>
        ) : (
          body
        )}
      </td>
    );
  },
  (a, b) =>
    a.level?.[0] === b.level?.[0] && a.level?.[1] === b.level?.[1] && a.scale === b.scale && a.enabled === b.enabled && a.format === b.format && a.onPick === b.onPick,
);
