#!/usr/bin/env node
// Builds everything into web/dist/ (the shell at dist/index.html, written last, so that a
// dist/index.html newer than the sources means a complete, current build):
//   dist/sdk/oddstream-client.js   the SDK, one ES module shared by the page (import map)
//   dist/board/board.js            the React live board   <oddstream-board>
//   dist/betslip/main.js           the Angular bet slip   <oddstream-betslip>
//   dist/mobile/                   the mobile view on SSE (page, mobile.js, sw.js, manifest, icon)
//   dist/shell.js, dist/index.html the shell
// and prints the size of each (raw and gzip) to stdout and dist/sizes.json.
import { spawnSync } from "node:child_process";
import { copyFileSync, cpSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";
import { build } from "vite";
import react from "@vitejs/plugin-react";

const web = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const dist = join(web, "dist");
const bin = (name) => join(web, "node_modules", ".bin", name);

function run(cmd, args, cwd = web) {
  const started = Date.now();
  const r = spawnSync(cmd, args, { cwd, stdio: "inherit", env: { ...process.env, NG_CLI_ANALYTICS: "false" } });
  if (r.status !== 0) {
    console.error(`build: ${relative(web, cmd)} ${args.join(" ")} failed (exit ${r.status})`);
    process.exit(1);
  }
  return Date.now() - started;
}

const quiet = { logLevel: "warn", configFile: false };
const production = { "process.env.NODE_ENV": JSON.stringify("production") };

function lib(entry, outDir, fileName, { external = [], plugins = [] } = {}) {
  return build({
    ...quiet,
    root: web,
    plugins,
    define: production,
    build: {
      outDir,
      emptyOutDir: true,
      minify: true,
      sourcemap: false,
      target: "es2022",
      reportCompressedSize: false,
      lib: { entry, formats: ["es"], fileName: () => fileName },
      // Lib mode keeps whitespace in ES output (for consumers that tree-shake); these files
      // are served to browsers as they are, so minify fully.
      rolldownOptions: { external, output: { minify: true } },
    },
  });
}

/** One module built alone into `file`, beside others in its folder (lib mode empties its outDir). */
async function single(entry, file, options) {
  const tmp = `${file}.tmp`;
  await lib(entry, tmp, "out.js", options);
  copyFileSync(join(tmp, "out.js"), file);
  rmSync(tmp, { recursive: true, force: true });
}

const t0 = Date.now();
rmSync(join(dist, "index.html"), { force: true });
mkdirSync(dist, { recursive: true });

console.log("build: @oddstream/client (tsc: ESM + .d.ts)");
run(bin("tsc"), ["-p", "packages/client/tsconfig.build.json"]);
console.log("build: @oddstream/react (tsc: ESM + .d.ts)");
run(bin("tsc"), ["-p", "packages/react/tsconfig.build.json"]);

console.log("build: SDK bundle -> dist/sdk/oddstream-client.js");
await lib(join(web, "packages/client/src/index.ts"), join(dist, "sdk"), "oddstream-client.js");

console.log("build: React live board -> dist/board/board.js");
await lib(join(web, "apps/board/src/main.tsx"), join(dist, "board"), "board.js", {
  external: ["@oddstream/client"],
  plugins: [react()],
});

console.log("build: Angular bet slip -> dist/betslip/main.js");
run(bin("ng"), ["build"], join(web, "apps/betslip"));
rmSync(join(dist, "betslip", "prerendered-routes.json"), { force: true });

console.log("build: mobile view -> dist/mobile/");
const mobile = join(dist, "mobile");
await lib(join(web, "apps/mobile/src/mobile.ts"), mobile, "mobile.js", { external: ["@oddstream/client"] });
await single(join(web, "apps/mobile/src/sw.ts"), join(mobile, "sw.js"));
cpSync(join(web, "apps/mobile/public"), mobile, { recursive: true });
copyFileSync(join(web, "apps/mobile/index.html"), join(mobile, "index.html"));

console.log("build: shell -> dist/index.html");
await single(join(web, "apps/shell/src/shell.ts"), join(dist, "shell.js"), { external: ["@oddstream/client"] });

function files(dir) {
  return readdirSync(dir).flatMap((name) => {
    const p = join(dir, name);
    return statSync(p).isDirectory() ? files(p) : [p];
  });
}
const sizes = {};
for (const [name, dir] of [["sdk", "sdk"], ["board", "board"], ["betslip", "betslip"], ["mobile", "mobile"], ["shell", "."]]) {
  // The mobile view: its script, service worker, page and manifest (the SDK is counted apart).
  const own = (f) => f.endsWith(".js") || (name === "mobile" && /\.(html|json)$/.test(f));
  const list = name === "shell" ? [join(dist, "shell.js"), join(web, "apps/shell/index.html")] : files(join(dist, dir)).filter(own);
  let raw = 0;
  let gz = 0;
  for (const f of list) {
    const buf = readFileSync(f);
    raw += buf.length;
    gz += gzipSync(buf, { level: 9 }).length;
  }
  sizes[name] = { files: list.map((f) => relative(dist, f)), raw, gzip: gz };
}
writeFileSync(join(dist, "sizes.json"), JSON.stringify(sizes, null, 2) + "\n");
const kb = (n) => `${(n / 1024).toFixed(1)} kB`;
for (const [name, s] of Object.entries(sizes)) console.log(`build: ${name.padEnd(8)} ${kb(s.raw).padStart(9)} raw  ${kb(s.gzip).padStart(8)} gzip`);

// Last: the shell page. Its presence and mtime tell oddstream/webui.py the build is complete.
copyFileSync(join(web, "apps/shell/index.html"), join(dist, "index.html"));
console.log(`build: done in ${((Date.now() - t0) / 1000).toFixed(1)} s -> ${relative(process.cwd(), dist)}/index.html`);
