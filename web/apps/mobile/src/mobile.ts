/**
 * The mobile view: a phone-sized page of live prices whose one connection is SSE by choice
 * (`transport: "sse"`), so it works wherever plain HTTP does. Across network changes the
 * SDK resumes the stream from its last `id:` (Last-Event-ID); the page only draws.
 *
 * Each price shows its age: the time since the feed's own timestamp (`ts`) of the delta
 * that set it (the snapshot's for a price that has not moved since). Drawing is conflated
 * to the display's frame rate: a market that changes ten times in a frame is drawn once,
 * and only its changed text nodes are touched.
 *
 * Query: `?sports=football,tennis` (the lobbies shown; default football), `?gateway=URL`
 * (default: this page's origin).
 */
import { compareDecimal, createClient, formatPrice, type MarketBook, type OddsClient } from "@oddstream/client";
import { Announcer, moveArrow, moveWord } from "../../common/announce.js";

type Move = "up" | "down" | "none";

interface Row {
  readonly li: HTMLLIElement;
  readonly name: HTMLSpanElement;
  readonly price: HTMLSpanElement;
  readonly dir: HTMLSpanElement;
  readonly word: HTMLSpanElement;
  readonly age: HTMLSpanElement;
  since: number;
  shown: string | null;
}

interface Card {
  readonly root: HTMLElement;
  readonly title: HTMLHeadingElement;
  readonly badge: HTMLSpanElement;
  readonly list: HTMLUListElement;
  readonly rows: Map<string, Row>;
  readonly release: () => void;
}

const params = new URLSearchParams(location.search);
const sports = (params.get("sports") ?? "football").split(",").map((s) => s.trim()).filter(Boolean);
const client: OddsClient = createClient({ url: params.get("gateway") ?? `${location.origin}/`, transport: "sse" });
// For the console and the browser tests, as on the shell.
(globalThis as { oddstream?: { client: OddsClient } }).oddstream = { client };

const main = document.getElementById("markets") as HTMLElement;
const announcer = new Announcer(document.getElementById("announce") as HTMLElement);
const cards = new Map<string, Card>();
const events = new Map<string, HTMLElement>();
const dirty = new Set<string>();
let frame = 0;

function el<K extends keyof HTMLElementTagNameMap>(tag: K, className = "", text = ""): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text) node.textContent = text;
  return node;
}

/** "now", "12 s", "3 min", "2 h", "5 d": how old a price is, from its feed timestamp. */
function age(ms: number): string {
  const s = Math.floor(Math.max(0, ms) / 1000);
  if (s < 1) return "now";
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86_400) return `${Math.floor(s / 3600)} h`;
  return `${Math.floor(s / 86_400)} d`;
}

function set(node: HTMLElement, text: string): void {
  if (node.textContent !== text) node.textContent = text; // Touch the DOM only on change.
}

function eventSection(eventId: string): HTMLElement {
  let section = events.get(eventId);
  if (!section) {
    section = el("section", "event");
    section.dataset["eventId"] = eventId;
    section.append(el("h2", "", eventId));
    events.set(eventId, section);
  }
  set(section.querySelector("h2") as HTMLElement, client.getEvent(eventId)?.name ?? eventId);
  return section;
}

function card(marketId: string): Card {
  let c = cards.get(marketId);
  if (c) return c;
  const root = el("section", "market");
  root.dataset["marketId"] = marketId;
  const title = el("h3");
  const badge = el("span", "badge");
  const list = el("ul");
  const heading = el("span");
  title.append(heading, badge);
  root.append(title, list);
  c = { root, title, badge, list, rows: new Map(), release: client.watchMarket(marketId, () => invalidate(marketId)) };
  cards.set(marketId, c);
  return c;
}

function row(c: Card, selectionId: string, book: MarketBook): Row {
  let r = c.rows.get(selectionId);
  if (r) return r;
  const li = el("li");
  li.dataset["selectionId"] = selectionId;
  const name = el("span", "name");
  const price = el("span", "price");
  const dir = el("span", "dir");
  dir.setAttribute("aria-hidden", "true");
  const word = el("span", "sr");
  const ageNode = el("span", "age");
  price.append(dir, el("span", "value"), word);
  li.append(name, price, ageNode);
  c.list.append(li);
  r = { li, name, price, dir, word, age: ageNode, since: book.ts, shown: null };
  c.rows.set(selectionId, r);
  return r;
}

function invalidate(marketId: string): void {
  dirty.add(marketId);
  frame ||= requestAnimationFrame(flush);
}

function flush(): void {
  frame = 0;
  for (const marketId of dirty) draw(marketId);
  dirty.clear();
}

function draw(marketId: string): void {
  const book = client.getMarket(marketId);
  const c = cards.get(marketId);
  if (!book || !c) return;
  c.root.dataset["status"] = book.status;
  c.root.dataset["seq"] = String(book.seq);
  set(c.title.firstChild as HTMLElement, book.name);
  const blocked = book.syncing ? "Updating…" : book.status === "open" ? "" : statusText(book);
  set(c.badge, blocked);
  for (const sel of book.selections) {
    const r = row(c, sel.selectionId, book);
    set(r.name, sel.name);
    r.li.dataset["price"] = sel.price ?? "";
    r.li.dataset["status"] = sel.status;
    if (sel.price !== r.shown) {
      const move: Move =
        r.shown === null || sel.price === null ? "none" : compareDecimal(sel.price, r.shown) > 0 ? "up" : "down";
      if (r.shown !== null) r.since = book.ts; // The delta that moved it.
      r.shown = sel.price;
      r.li.dataset["move"] = move;
      set(r.dir, moveArrow(move));
      set(r.word, move === "none" ? "" : ` (${moveWord(move)})`);
      set(r.price.querySelector(".value") as HTMLElement, sel.status === "active" ? formatPrice(sel.price, "decimal") : sel.status);
    }
    r.li.dataset["since"] = String(r.since);
    set(r.age, age(Date.now() - r.since));
  }
}

function statusText(book: MarketBook): string {
  const word = book.status.charAt(0).toUpperCase() + book.status.slice(1);
  return book.reason ? `${word} · ${book.reason}` : word;
}

function layout(): void {
  const wanted = new Set<string>();
  const order: HTMLElement[] = [];
  for (const sport of sports) {
    for (const entry of client.getLobby(sport).events) {
      const section = eventSection(entry.eventId);
      order.push(section);
      for (const marketId of entry.marketIds) {
        wanted.add(marketId);
        const c = card(marketId);
        if (c.root.parentElement !== section) section.append(c.root);
        invalidate(marketId);
      }
    }
  }
  for (const [marketId, c] of cards) {
    if (wanted.has(marketId)) continue;
    c.release();
    c.root.remove();
    cards.delete(marketId);
  }
  if (order.length === 0) return;
  main.replaceChildren(...order);
}

/** Every price's age, once a second: text nodes only, and only those that change. */
function tick(): void {
  const now = Date.now();
  for (const c of cards.values()) for (const r of c.rows.values()) set(r.age, age(now - r.since));
}

const pill = document.getElementById("conn") as HTMLElement;
const showState = (): void => {
  pill.dataset["state"] = client.state;
  pill.textContent = client.state === "open" ? `live · ${client.transportKind}` : client.state;
};

client.on("price", (p) => {
  if (p.direction === "none") return;
  const book = client.getMarket(p.marketId);
  const name = book?.selections.find((s) => s.selectionId === p.selectionId)?.name ?? p.selectionId;
  announcer.say(`${p.marketId}/${p.selectionId}`, `${name} ${moveWord(p.direction)} to ${p.price ?? "no price"}`);
});
client.on("status", (s) => {
  const book = s.book;
  announcer.say(s.marketId, `${book.name}: ${statusText(book)}`, s.status !== "open");
});

client.watchState(showState);
showState();
for (const sport of sports) client.watchLobby(sport, layout);
client.subscribe({ lobbies: sports });
setInterval(tick, 1000);

if ("serviceWorker" in navigator) {
  navigator.serviceWorker.register("./sw.js").catch((err: unknown) => console.warn("service worker not registered", err));
}
