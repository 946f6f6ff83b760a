/**
 * The bet slip micro-frontend as a custom element, <oddstream-betslip>. Zoneless change
 * detection: signals drive rendering, and no zone.js patches the page's shared WebSocket or
 * the React board's timers.
 */
import { provideZonelessChangeDetection } from "@angular/core";
import { createCustomElement } from "@angular/elements";
import { createApplication } from "@angular/platform-browser";
import { BetSlipComponent } from "./app/betslip.component";

async function define(): Promise<void> {
  if (customElements.get("oddstream-betslip")) return;
  const app = await createApplication({ providers: [provideZonelessChangeDetection()] });
  const element = createCustomElement(BetSlipComponent, { injector: app.injector });
  customElements.define("oddstream-betslip", element);
}

define().catch((err: unknown) => console.error("oddstream-betslip failed to start", err));
