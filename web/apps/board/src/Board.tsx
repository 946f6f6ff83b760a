import { useEffect, useRef, useState } from "react";
import {
  clockSecondsAt,
  formatPrice,
  pickSelection,
  compareDecimal,
  type EventView,
  type MarketBook,
  type PriceFormat,
  type SelectionView,
} from "@oddstream/client";
import { useEvent, useLobby, useMarket, useOddsClient } from "@oddstream/react";
import { Announcer, moveArrow, moveWord } from "../../common/announce.js";
import { Ladder, hasLadder } from "./Ladder.js";

const FLASH_MS = 1200;

export function Board(props: { sports: readonly string[] }) {
  const [format, setFormat] = useState<PriceFormat>("decimal");
  return (
    <div className="board">
      <div className="bar">
        <h2>Live board</h2>
        <span className="spacer" />
        <label>
          Odds{" "}
          <select value={format} onChange={(e) => setFormat(e.target.value as PriceFormat)} data-testid="odds-format">
            <option value="decimal">Decimal</option>
            <option value="fractional">Fractional</option>
            <option value="american">American</option>
          </select>
        </label>
      </div>
      {props.sports.map((sport) => (
        <Sport key={sport} sport={sport} format={format} />
      ))}
      <Announcements />
    </div>
  );
}

/**
 * The polite live region: price moves and suspensions of the markets on the board, at most
 * one sentence every few seconds (see `Announcer`), suspensions first.
 */
function Announcements() {
  const client = useOddsClient();
  const region = useRef<HTMLDivElement>(null);
  useEffect(() => {
    if (!region.current) return undefined;
    const announcer = new Announcer(region.current);
    const name = (marketId: string, selectionId: string): string =>
      client.getMarket(marketId)?.selections.find((s) => s.selectionId === selectionId)?.name ?? selectionId;
    const offs = [
      client.on("price", (p) => {
        if (p.direction !== "none") announcer.say(`${p.marketId}/${p.selectionId}`, `${name(p.marketId, p.selectionId)} ${moveWord(p.direction)} to ${p.price ?? "no price"}`);
      }),
      client.on("suspended", (s) => announcer.say(s.marketId, `${s.book.name} suspended${s.reason ? `, ${s.reason}` : ""}`, true)),
      client.on("reopened", (s) => announcer.say(s.marketId, `${s.book.name} open again`, true)),
    ];
    return () => {
      for (const off of offs) off();
      announcer.dispose();
    };
  }, [client]);
  return <div ref={region} className="sr" data-testid="announcer" />;
}

function Sport({ sport, format }: { sport: string; format: PriceFormat }) {
  const lobby = useLobby(sport);
  return (
    <section className="sport" data-sport={sport}>
      <h3>{sport.replace(/_/g, " ")}</h3>
      {lobby.events.length === 0 ? <div className="empty">Waiting for events…</div> : null}
      {lobby.events.map((entry) => (
        <EventRow key={entry.eventId} eventId={entry.eventId} marketIds={entry.marketIds} format={format} />
      ))}
    </section>
  );
}

function EventRow(props: { eventId: string; marketIds: readonly string[]; format: PriceFormat }) {
  // The lobby already covers the event and its main markets: read, do not subscribe again.
  const event = useEvent(props.eventId, { subscribe: false });
  if (!event) return null;
  return (
    <div className="row" data-event-id={event.eventId} data-phase={event.phase}>
      <div className="teams">
        <span className="name">{event.home}</span>
        <span className="name">{event.away}</span>
        <span className="comp">{event.competition}</span>
      </div>
      <EventState event={event} />
      <div>
        {props.marketIds.map((id) => (
          <Market key={id} marketId={id} event={event} format={props.format} />
        ))}
      </div>
    </div>
  );
}

function useNow(active: boolean): number {
  const [now, setNow] = useState(() => Date.now());
  useEffect(() => {
    if (!active) return undefined;
    const t = setInterval(() => setNow(Date.now()), 1000);
    return () => clearInterval(t);
  }, [active]);
  return now;
}

function EventState({ event }: { event: EventView }) {
  const now = useNow(event.phase === "live" && (event.clock?.running ?? false));
  if (event.phase === "pre") {
    const t = new Date(event.startTime);
    return (
      <div className="state">
        <div className="pre">{t.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })}</div>
      </div>
    );
  }
  const seconds = clockSecondsAt(event, now);
  return (
    <div className="state" data-testid="score">
      <div className="score">
        {event.score[0]} – {event.score[1]}
      </div>
      {event.phase === "ended" ? (
        <div className="ended">FT</div>
      ) : event.clock ? (
        <div className="clock">
          {event.clock.period}
          {seconds !== null && event.clock.seconds > 0 ? ` ${Math.floor(seconds / 60)}'` : ""}
        </div>
      ) : (
        <div className="clock">LIVE</div>
      )}
    </div>
  );
}

function Market(props: { marketId: string; event: EventView; format: PriceFormat }) {
  // At most one render per display frame, with the latest book: an exchange market moves
  // many times a second, and nobody reads faster than the screen draws.
  const book = useMarket(props.marketId, { subscribe: false, perFrame: true });
  if (!book) return null;
  if (hasLadder(book)) return <Ladder book={book} event={props.event} format={props.format} />;
  const final = book.status === "settled" || book.status === "voided";
  const blocked = book.status !== "open" || book.syncing;
  return (
    <div className="market" data-market-id={book.marketId} data-status={book.status} data-seq={book.seq} data-epoch={book.epoch}>
      {book.selections.map((sel) => (
        <PriceButton key={sel.selectionId} book={book} sel={sel} event={props.event} format={props.format} disabled={blocked} />
      ))}
      {final ? <span className="result">{book.status === "voided" ? "Void" : "Settled"}</span> : null}
      {!final && book.status !== "open" ? (
        <div className="overlay" data-testid="suspended" role="status">
          {book.status === "suspended" ? "Suspended" : "Closed"}
          {book.reason ? ` · ${book.reason.toUpperCase()}` : ""}
        </div>
      ) : !final && book.syncing ? (
        <div className="overlay syncing" role="status">Updating…</div>
      ) : null}
    </div>
  );
}

function PriceButton(props: { book: MarketBook; sel: SelectionView; event: EventView; format: PriceFormat; disabled: boolean }) {
  const { book, sel } = props;
  const previous = useRef(sel.price);
  const [flash, setFlash] = useState<"up" | "down" | null>(null);
  useEffect(() => {
    const before = previous.current;
    previous.current = sel.price;
    if (before === null || sel.price === null || before === sel.price) return undefined;
    const c = compareDecimal(sel.price, before);
    if (c === 0) return undefined;
    setFlash(c > 0 ? "up" : "down");
    const t = setTimeout(() => setFlash(null), FLASH_MS);
    return () => clearTimeout(t);
  }, [sel.price]);
  const resultClass = sel.status !== "active" ? sel.status : "";
  const label = sel.selectionId === "home" ? "1" : sel.selectionId === "draw" ? "X" : sel.selectionId === "away" ? "2" : sel.name;
  return (
    <button
      type="button"
      className={["sel", flash ?? "", resultClass].filter(Boolean).join(" ")}
      data-selection-id={sel.selectionId}
      data-price={sel.price ?? ""}
      data-flash={flash ?? ""}
      title={`${sel.name} @ ${sel.price ?? "–"}`}
      disabled={props.disabled || sel.status !== "active" || sel.price === null}
      onClick={() =>
        pickSelection({
          marketId: book.marketId,
          selectionId: sel.selectionId,
          price: sel.price,
          label: sel.name,
          marketName: book.name,
          eventName: props.event.name,
        })
      }
    >
      <span className="lbl">{label}</span>
      <span className="px">
        {formatPrice(sel.price, props.format)}
        <span className="dir" aria-hidden="true">
          {moveArrow(flash)}
        </span>
      </span>
      {flash ? <span className="sr"> ({moveWord(flash)})</span> : null}
    </button>
  );
}
