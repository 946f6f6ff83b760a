/**
 * The shell: creates the page's ONE oddstream client, shares it, and loads each
 * micro-frontend on its own (a failure in one leaves the other working).
 */
import { createClient, registerSharedClient, type OddsClient } from "@oddstream/client";

interface MicroFrontend {
  readonly tag: string;
  readonly module: string;
  readonly slot: string;
}

const MICRO_FRONTENDS: readonly MicroFrontend[] = [
  { tag: "oddstream-board", module: "./board/board.js", slot: "board-slot" },
  { tag: "oddstream-betslip", module: "./betslip/main.js", slot: "betslip-slot" },
];

const params = new URLSearchParams(location.search);
const transport = params.get("transport");
const client = createClient({
  url: params.get("gateway") ?? `${location.origin}/`,
  transport: transport === "sse" || transport === "websocket" ? transport : "auto",
});
registerSharedClient(client);
// `?sports=horse_racing,greyhounds`: the lobbies the board shows (default: the page's own).
const sports = params.get("sports");
if (sports) document.querySelector("oddstream-board")?.setAttribute("sports", sports);
// For the console and the browser tests.
(globalThis as { oddstream?: { client: OddsClient } }).oddstream = { client };

const pill = document.getElementById("conn");
const showState = (): void => {
  if (!pill) return;
  pill.dataset["state"] = client.state;
  pill.textContent = client.state === "open" ? `live · ${client.transportKind}` : client.state;
};
client.watchState(showState);
showState();

for (const mfe of MICRO_FRONTENDS) {
  import(/* @vite-ignore */ new URL(mfe.module, import.meta.url).href)
    .then(() => customElements.whenDefined(mfe.tag))
    .then(() => {
      for (const el of document.querySelectorAll(mfe.tag)) (el as HTMLElement & { client: OddsClient }).client = client;
    })
    .catch((err: unknown) => {
      console.error(`${mfe.tag} failed to load`, err);
      const slot = document.getElementById(mfe.slot);
      if (slot) {
        const box = document.createElement("div");
        box.className = "mfe-error";
        box.textContent = `${mfe.tag} is unavailable right now.`;
        slot.replaceChildren(box);
      }
    });
}
