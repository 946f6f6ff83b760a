import {
  ChangeDetectionStrategy,
  Component,
  DestroyRef,
  Input,
  ViewEncapsulation,
  computed,
  effect,
  inject,
  input,
  output,
  signal,
} from "@angular/core";
import {
  compareDecimal,
  formatPrice,
  getSharedClient,
  onSelectionPicked,
  whenSharedClient,
  type MarketBook,
  type OddsClient,
  type SelectionPick,
} from "@oddstream/client";
import { OddsService } from "./odds.service";

interface SlipEntry {
  readonly key: string;
  readonly pick: SelectionPick;
  /** The price the user has agreed to (the one picked, or the last accepted). */
  readonly accepted: string | null;
}

// The host is the list item itself (`<li oddstream-slip-item>`), so the slip's list holds
// only list items, as assistive technology expects.
@Component({
  selector: "li[oddstream-slip-item]",
  changeDetection: ChangeDetectionStrategy.OnPush,
  host: {
    class: "item",
    "[class.blocked]": "blocked()",
    "[class.changed]": "changed()",
    "[attr.data-market-id]": "entry().pick.marketId",
    "[attr.data-selection-id]": "entry().pick.selectionId",
    "[attr.data-price]": "live() ?? ''",
    "[attr.data-accepted]": "entry().accepted ?? ''",
    "[attr.data-state]": "blocked() ? 'blocked' : changed() ? 'changed' : 'ok'",
  },
  template: `
    <div class="head">
      <span class="sel">{{ entry().pick.label }}</span>
      <button type="button" class="remove" title="Remove" [attr.aria-label]="'Remove ' + entry().pick.label" (click)="removed.emit()">×</button>
    </div>
    <div class="sub">{{ entry().pick.marketName }} · {{ entry().pick.eventName }}</div>
    <div class="price-line">
      @if (changed()) {
        <span class="old">{{ fmt(entry().accepted) }}</span>
        <span class="arrow">→</span>
        <span class="new" [class.up]="direction() === 'up'" [class.down]="direction() === 'down'">{{ fmt(live()) }}</span>
        <!-- The move in a glyph and a word, not by colour alone. -->
        <span class="dir" aria-hidden="true">{{ direction() === 'up' ? '▲' : direction() === 'down' ? '▼' : '' }}</span>
        <span class="sr">{{ direction() === 'up' ? '(up)' : direction() === 'down' ? '(down)' : '' }}</span>
      } @else {
        <span class="cur">{{ fmt(live()) }}</span>
      }
      @if (blocked()) {
        <span class="badge" data-testid="blocked">{{ blockedText() }}</span>
      }
    </div>
    @if (changed()) {
      <div class="actions">
        <button type="button" class="accept" [disabled]="blocked()" (click)="accepted.emit(live())">Accept</button>
        <button type="button" class="reject" (click)="removed.emit()">Reject</button>
      </div>
    }
  `,
})
export class SlipItemComponent {
  private readonly odds = inject(OddsService);
  readonly entry = input.required<SlipEntry>();
  readonly accepted = output<string | null>();
  readonly removed = output<void>();

  readonly book = computed<MarketBook | undefined>(() => this.odds.books().get(this.entry().pick.marketId));
  readonly selection = computed(() => this.book()?.selections.find((s) => s.selectionId === this.entry().pick.selectionId));
  readonly live = computed(() => this.selection()?.price ?? null);
  readonly changed = computed(() => {
    const live = this.live();
    const acc = this.entry().accepted;
    if (live === null || acc === null) return live !== acc && this.book() !== undefined;
    return compareDecimal(live, acc) !== 0;
  });
  readonly direction = computed(() => {
    const live = this.live();
    const acc = this.entry().accepted;
    if (live === null || acc === null) return "none";
    const c = compareDecimal(live, acc);
    return c > 0 ? "up" : c < 0 ? "down" : "none";
  });
  readonly blocked = computed(() => {
    const book = this.book();
    const sel = this.selection();
    return !book || book.syncing || book.status !== "open" || !sel || sel.status !== "active" || sel.price === null;
  });
  readonly blockedText = computed(() => {
    const book = this.book();
    if (!book) return "Loading…";
    if (book.syncing) return "Updating…";
    if (book.status === "suspended") return `Suspended${book.reason ? ` · ${book.reason}` : ""}`;
    if (book.status !== "open") return book.status === "settled" ? "Settled" : book.status === "voided" ? "Void" : "Closed";
    const sel = this.selection();
    if (!sel || sel.status !== "active") return sel ? sel.status : "Unavailable";
    return "No price";
  });

  fmt(price: string | null): string {
    return formatPrice(price);
  }
}

@Component({
  selector: "oddstream-betslip-root",
  imports: [SlipItemComponent],
  encapsulation: ViewEncapsulation.ShadowDom,
  changeDetection: ChangeDetectionStrategy.OnPush,
  styleUrl: "./betslip.component.css",
  template: `
    <section class="slip">
      <header>
        <h2>Bet slip</h2>
        <span class="count">{{ entries().length }}</span>
        <span class="conn" [attr.data-state]="odds.state()">{{ odds.state() }}</span>
      </header>
      @if (entries().length === 0) {
        <p class="empty">Click a price on the board to add it here.</p>
      }
      <ul>
        @for (e of entries(); track e.key) {
          <li oddstream-slip-item [entry]="e" (accepted)="accept(e.key, $event)" (removed)="remove(e.key)"></li>
        }
      </ul>
      @if (placed()) {
        <p class="placed" role="status">{{ placed() }}</p>
      }
      <button type="button" class="place" [disabled]="!canPlace()" (click)="place()">
        Place {{ entries().length }} bet{{ entries().length === 1 ? '' : 's' }}
      </button>
    </section>
  `,
})
export class BetSlipComponent {
  protected readonly odds = inject(OddsService);
  private readonly follows = new Map<string, () => void>();
  readonly entries = signal<readonly SlipEntry[]>([]);
  readonly placed = signal<string>("");

  readonly canPlace = computed(() => {
    const books = this.odds.books();
    const list = this.entries();
    return (
      list.length > 0 &&
      list.every((e) => {
        const book = books.get(e.pick.marketId);
        const sel = book?.selections.find((s) => s.selectionId === e.pick.selectionId);
        return (
          book !== undefined && !book.syncing && book.status === "open" && sel?.status === "active" &&
          sel.price !== null && e.accepted !== null && compareDecimal(sel.price, e.accepted) === 0
        );
      })
    );
  });

  /** The shared client; set by the shell (falls back to the page registry). */
  @Input()
  set client(value: OddsClient | null) {
    this.odds.setClient(value);
  }

  constructor() {
    const destroyRef = inject(DestroyRef);
    const off = onSelectionPicked((pick) => this.add(pick));
    const existing = getSharedClient();
    if (existing) this.odds.setClient(existing);
    else void whenSharedClient().then((c) => this.odds.setClient(c));
    // Follow exactly the markets on the slip.
    effect(() => {
      const wanted = new Set(this.entries().map((e) => e.pick.marketId));
      for (const [id, release] of this.follows) {
        if (!wanted.has(id)) {
          release();
          this.follows.delete(id);
        }
      }
      for (const id of wanted) if (!this.follows.has(id)) this.follows.set(id, this.odds.follow(id));
    });
    destroyRef.onDestroy(() => {
      off();
      for (const release of this.follows.values()) release();
      this.follows.clear();
    });
  }

  add(pick: SelectionPick): void {
    const key = `${pick.marketId}/${pick.selectionId}`;
    this.placed.set("");
    if (this.entries().some((e) => e.key === key)) return;
    this.entries.update((list) => [...list, { key, pick, accepted: pick.price }]);
  }

  accept(key: string, price: string | null): void {
    this.entries.update((list) => list.map((e) => (e.key === key ? { ...e, accepted: price } : e)));
  }

  remove(key: string): void {
    this.entries.update((list) => list.filter((e) => e.key !== key));
  }

  place(): void {
    const n = this.entries().length;
    this.entries.set([]);
    this.placed.set(`${n} bet${n === 1 ? "" : "s"} placed (demo).`);
  }
}
