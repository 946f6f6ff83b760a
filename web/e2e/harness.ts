/**
 * End-to-end harness: starts `oddstream dev` (and restarts it on the same port), serves the
 * built shell, drives Debian's Chromium through playwright-core. Every wait is bounded.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { createReadStream, existsSync, mkdirSync, statSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { dirname, extname, join, normalize, resolve } from "node:path";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import { chromium, type Browser, type Page } from "playwright-core";

export const WEB = resolve(dirname(fileURLToPath(import.meta.url)), "..");
export const REPO = resolve(WEB, "..");
export const DIST = join(WEB, "dist");
export const ARTIFACTS = join(WEB, "artifacts");

export const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

export function chromiumPath(): string {
  const out = spawnSync("bash", [join(WEB, "scripts", "ensure-chromium.sh")], { encoding: "utf8" });
  if (out.status !== 0) throw new Error(`ensure-chromium.sh failed: ${out.stderr}`);
  return out.stdout.trim();
}

export async function launchBrowser(): Promise<Browser> {
  return chromium.launch({ executablePath: chromiumPath(), args: CHROMIUM_ARGS, timeout: 60_000 });
}

export function screenshotPath(name: string): string {
  mkdirSync(ARTIFACTS, { recursive: true });
  return join(ARTIFACTS, `${name}.png`);
}

export interface AxeViolation {
  readonly id: string;
  readonly impact: string | null;
  readonly help: string;
  readonly targets: readonly string[];
}

/**
 * axe-core (npm) run in the page, open shadow roots included: the violations of impact
 * "serious" or "critical", each with the selectors of its nodes (empty when the page passes).
 */
export async function seriousViolations(page: Page): Promise<AxeViolation[]> {
  await page.addScriptTag({ path: createRequire(import.meta.url).resolve("axe-core/axe.min.js") });
  return page.evaluate(async () => {
    const axe = (globalThis as unknown as { axe: { run: (ctx: Document, opts: object) => Promise<{ violations: { id: string; impact: string | null; help: string; nodes: { target: unknown[] }[] }[] }> } }).axe;
    const result = await axe.run(document, { resultTypes: ["violations"] });
    return result.violations
      .filter((v) => v.impact === "serious" || v.impact === "critical")
      .map((v) => ({ id: v.id, impact: v.impact, help: v.help, targets: v.nodes.slice(0, 5).map((n) => JSON.stringify(n.target)) }));
  });
}

/** One `oddstream` process: `oddstream dev` (:meth:`start`), or any role (:meth:`run`). */
export class DevServer {
  private constructor(
    readonly proc: ChildProcess,
    readonly url: string,
    readonly port: number,
    private readonly exited: Promise<number | null>,
    readonly log: string[],
  ) {}

  /** Start `oddstream dev` on `port` (0: any free one) and wait for its URL line. */
  static async start(port: number, extra: readonly string[] = []): Promise<DevServer> {
    return DevServer.run(["dev", "--port", String(port), ...extra]);
  }

  /**
   * Start `oddstream ARGS` and wait for the stdout line `ready` matches (by default a
   * gateway's `serving on URL`); `url` is the match's first group.
   */
  static async run(argv: readonly string[], ready = /serving on (http:\/\/\S+?)\/?\s/): Promise<DevServer> {
    const python = process.env["ODDSTREAM_PYTHON"] ?? join(REPO, ".venv", "bin", "python");
    if (!existsSync(python)) {
      throw new Error(`${python} is missing: run scripts/setup.sh at the repository root first`);
    }
    const args = ["-m", "oddstream.cli", ...argv];
    const proc = spawn(python, args, {
      cwd: REPO,
      env: { ...process.env, PYTHONUNBUFFERED: "1" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    const log: string[] = [];
    const exited = new Promise<number | null>((res) => proc.once("exit", (code) => res(code)));
    const url = await new Promise<string>((res, rej) => {
      const timer = setTimeout(() => rej(new Error(`oddstream ${argv[0]} did not start in 60 s:\n${log.join("")}`)), 60_000);
      let buffer = "";
      proc.stdout?.on("data", (chunk: Buffer) => {
        const text = chunk.toString();
        log.push(text);
        buffer += text;
        const m = ready.exec(buffer);
        if (m?.[1]) {
          clearTimeout(timer);
          res(m[1]);
        }
      });
      proc.stderr?.on("data", (chunk: Buffer) => log.push(chunk.toString()));
      void exited.then((code) => {
        clearTimeout(timer);
        rej(new Error(`oddstream ${argv[0]} exited with ${code} before it was ready:\n${log.join("")}`));
      });
    });
    return new DevServer(proc, url, URL.canParse(url) ? Number(new URL(url).port) : 0, exited, log);
  }

  /** SIGTERM (the server drains: `reconnect` to every client) and wait for the exit. */
  async stop(timeoutMs = 20_000): Promise<number | null> {
    if (this.proc.exitCode !== null) return this.proc.exitCode;
    this.proc.kill("SIGTERM");
    const timer = setTimeout(() => this.proc.kill("SIGKILL"), timeoutMs);
    try {
      return await this.exited;
    } finally {
      clearTimeout(timer);
    }
  }

  async json<T>(path: string): Promise<T> {
    const r = await fetch(`${this.url}${path}`, { signal: AbortSignal.timeout(5000) });
    if (!r.ok) throw new Error(`GET ${path}: ${r.status}`);
    return (await r.json()) as T;
  }
}

const TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".json": "application/json",
  ".css": "text/css",
  ".svg": "image/svg+xml",
};

/**
 * Serves web/dist when the gateway does not serve the shell itself yet (until the dev
 * command mounts it at `/`); the shell then connects to the gateway named in `?gateway=`.
 */
export async function serveDist(): Promise<{ url: string; close: () => Promise<void> }> {
  const server: Server = createServer((req, res) => {
    const path = normalize(decodeURIComponent(new URL(req.url ?? "/", "http://x").pathname));
    let file = join(DIST, path);
    if (!file.startsWith(DIST)) {
      res.writeHead(403).end();
      return;
    }
    if (existsSync(file) && statSync(file).isDirectory()) file = join(file, "index.html");
    if (!existsSync(file)) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { "content-type": TYPES[extname(file)] ?? "application/octet-stream", "cache-control": "no-store" });
    createReadStream(file).pipe(res);
  });
  await new Promise<void>((res) => server.listen(0, "127.0.0.1", res));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/`,
    close: () => new Promise<void>((res) => server.close(() => res())),
  };
}
