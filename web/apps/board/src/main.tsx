/**
 * The live board micro-frontend as a custom element, <oddstream-board>. The host hands it the
 * page's shared client through the `client` property (or registers it with
 * `registerSharedClient`); it never opens a connection of its own.
 */
import { createRoot, type Root } from "react-dom/client";
import { whenSharedClient, type OddsClient } from "@oddstream/client";
import { OddsProvider } from "@oddstream/react";
import { Board } from "./Board.js";
import { css } from "./styles.js";

class OddstreamBoard extends HTMLElement {
  static observedAttributes = ["sports"];
  private root: Root | null = null;
  private mount: HTMLElement | null = null;
  private _client: OddsClient | null = null;

  get client(): OddsClient | null {
    return this._client;
  }
  set client(value: OddsClient | null) {
    this._client = value;
    this.render();
  }

  connectedCallback(): void {
    // A `client` set before this element was defined is an own property shadowing the
    // accessor: take it over.
    const early = Object.getOwnPropertyDescriptor(this, "client");
    if (early) {
      delete (this as { client?: unknown }).client;
      this._client = (early.value as OddsClient | null) ?? null;
    }
    if (!this.mount) {
      const shadow = this.attachShadow({ mode: "open" });
      const style = document.createElement("style");
      style.textContent = css;
      this.mount = document.createElement("div");
      shadow.append(style, this.mount);
    }
    this.root ??= createRoot(this.mount);
    if (this._client) this.render();
    else void whenSharedClient().then((c) => (this.client = this._client ?? c));
  }

  disconnectedCallback(): void {
    // Unmounting releases every subscription the board holds on the shared client.
    this.root?.unmount();
    this.root = null;
  }

  attributeChangedCallback(): void {
    this.render();
  }

  private render(): void {
    if (!this.root || !this._client) return;
    const sports = (this.getAttribute("sports") ?? "football,tennis").split(",").map((s) => s.trim()).filter(Boolean);
    this.root.render(
      <OddsProvider client={this._client}>
        <Board sports={sports} />
      </OddsProvider>,
    );
  }
}

if (!customElements.get("oddstream-board")) customElements.define("oddstream-board", OddstreamBoard);
