/**
 * The mobile view's service worker: it caches the app shell (page, script, SDK, manifest,
 * icon) so the app starts without a network, and nothing else. Prices never pass through
 * it: requests for /sse, /v1/ and /ws are not intercepted at all, so a price on screen is
 * always one the stream delivered, never a cached one.
 *
 * The shell is fetched network-first (a new build shows at once) and falls back to the
 * cache when offline. A new version (`VERSION`) replaces the old cache on activation.
 */
const VERSION = "oddstream-mobile-shell-v1";
const SHELL = ["./", "./index.html", "./mobile.js", "./manifest.json", "./icon.svg", "../sdk/oddstream-client.js"];

// The DOM lib has no service-worker types (and the WebWorker lib conflicts with it): the
// few members used here.
interface ExtendableEvent extends Event {
  waitUntil(p: Promise<unknown>): void;
}
interface FetchEvent extends ExtendableEvent {
  readonly request: Request;
  respondWith(r: Promise<Response>): void;
}
interface WorkerScope {
  addEventListener(type: "install" | "activate", fn: (e: ExtendableEvent) => void): void;
  addEventListener(type: "fetch", fn: (e: FetchEvent) => void): void;
  skipWaiting(): Promise<void>;
  readonly clients: { claim(): Promise<void> };
  readonly registration: { readonly scope: string };
}
const worker = self as unknown as WorkerScope;
const shellUrls = new Set(SHELL.map((path) => new URL(path, worker.registration.scope).href));

worker.addEventListener("install", (e) => {
  e.waitUntil(
    caches
      .open(VERSION)
      .then((cache) => cache.addAll([...shellUrls]))
      .then(() => worker.skipWaiting()),
  );
});

worker.addEventListener("activate", (e) => {
  e.waitUntil(
    caches
      .keys()
      .then((keys) => Promise.all(keys.filter((k) => k !== VERSION).map((k) => caches.delete(k))))
      .then(() => worker.clients.claim()),
  );
});

worker.addEventListener("fetch", (e) => {
  const url = new URL(e.request.url);
  url.search = ""; // ?gateway=, ?sports= name the same shell.
  if (e.request.method !== "GET" || !shellUrls.has(url.href)) return; // Prices: the network only.
  e.respondWith(
    fetch(e.request)
      .then((response) => {
        if (response.ok) {
          const copy = response.clone();
          void caches.open(VERSION).then((cache) => cache.put(url.href, copy));
        }
        return response;
      })
      .catch(async () => (await caches.match(url.href)) ?? Response.error()),
  );
});
