/**
 * What a screen reader hears of live prices: a polite live region (`role="status"`) that
 * says at most one thing every `intervalMs`. Between two announcements the changes are
 * coalesced: the latest per key (a market, a selection), suspensions first, at most
 * `maxItems` named and the rest counted. A busy exchange market therefore costs a listener
 * one short sentence every few seconds, never a stream of numbers.
 *
 * Shared by the front ends as source (each bundles its own copy): no framework, no state
 * outside the instance.
 */
export interface AnnouncerOptions {
  /** The shortest time between two announcements (default 4000 ms). */
  readonly intervalMs?: number;
  /** How many changes one announcement names (default 3); the rest are counted. */
  readonly maxItems?: number;
}

export class Announcer {
  readonly region: HTMLElement;
  private readonly urgent = new Map<string, string>();
  private readonly pending = new Map<string, string>();
  private readonly intervalMs: number;
  private readonly maxItems: number;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private last = -Infinity;

  /** Makes `region` a polite, atomic status region (visually hidden by the caller's CSS). */
  constructor(region: HTMLElement, options: AnnouncerOptions = {}) {
    this.region = region;
    this.intervalMs = options.intervalMs ?? 4000;
    this.maxItems = options.maxItems ?? 3;
    region.setAttribute("role", "status");
    region.setAttribute("aria-live", "polite");
    region.setAttribute("aria-atomic", "true");
  }

  /** Queue `text` under `key` (a later text for the same key replaces it). */
  say(key: string, text: string, urgent = false): void {
    (urgent ? this.urgent : this.pending).set(key, text);
    if (urgent) this.pending.delete(key);
    if (this.timer !== undefined) return;
    const wait = Math.max(0, this.last + this.intervalMs - performance.now());
    this.timer = setTimeout(() => this.flush(), wait);
  }

  dispose(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  private flush(): void {
    this.timer = undefined;
    const items = [...this.urgent.values(), ...this.pending.values()];
    this.urgent.clear();
    this.pending.clear();
    if (items.length === 0) return;
    this.last = performance.now();
    const named = items.slice(0, this.maxItems);
    const rest = items.length - named.length;
    this.region.textContent = named.join(". ") + (rest > 0 ? `. And ${rest} more changes.` : ".");
  }
}

/** "up" / "down" as words and arrows: a price move is never told by colour alone. */
export function moveWord(direction: "up" | "down" | "none"): string {
  return direction === "up" ? "up" : direction === "down" ? "down" : "unchanged";
}

export function moveArrow(direction: "up" | "down" | "none" | null): string {
  return direction === "up" ? "▲" : direction === "down" ? "▼" : "";
}
