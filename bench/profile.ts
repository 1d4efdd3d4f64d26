/**
 * Where a benchmarked server's main thread spends its time: reads a V8 CPU profile
 * (`--cpu-prof`) and groups the samples of a time window by what they were doing.
 */
import { copyFileSync, readdirSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";

const ROOT = resolve(import.meta.dirname, "..");

export interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  samples: number[];
  timeDeltas: number[];
}

/** Now on the monotonic clock the V8 profiler stamps samples with (µs), as Node's hrtime is on Linux. */
export function monotonicUs(): number {
  return Number(process.hrtime.bigint() / 1000n);
}

function shortUrl(url: string): string {
  const nm = url.lastIndexOf("node_modules/");
  if (nm >= 0) return url.slice(nm + "node_modules/".length);
  const src = url.indexOf(`${ROOT}/`);
  if (src >= 0) return url.slice(src + ROOT.length + 1);
  return url.replace(/^file:\/\//, "");
}

/** Libraries whose time is theirs whoever called them (writing a reply, logging, a commit). */
const STICKY: ReadonlyArray<[RegExp, string]> = [
  [
    /^node:(_tls|tls|internal\/tls|net|_http|internal\/http|internal\/stream_base|internal\/streams)/,
    "TLS/HTTP (node)",
  ],
  [
    /node_modules\/(fastify|@fastify|find-my-way|avvio|fast-json-stringify|secure-json-parse|light-my-request|fast-querystring|toad-cache)\//,
    "fastify",
  ],
  [/node_modules\/(pino|sonic-boom|thread-stream|pino-std-serializers)\//, "logging (pino)"],
  [/node_modules\/better-sqlite3\//, "SQLite + audit"],
  [/node_modules\/pkcs11js\//, "HSM calls (pkcs11js, main-thread part)"],
];

/** Our own files: the innermost one on the stack says what the library code below it was doing. */
const SOURCES: ReadonlyArray<[RegExp, string]> = [
  [/\/src\/pki\/csr\.ts/, "CSR parse + verify"],
  [/\/src\/broker\/jwt/, "JWT"],
  [/\/src\/secrets\/|\/src\/kms\//, "secrets (KMS)"],
  [/\/src\/pki\/keys\.ts/, "key generation (issue)"],
  [/\/src\/pki\/certificate\.ts/, "x509/asn1 building"],
  [/\/src\/pki\/signer\.ts|\/src\/hsm\//, "HSM calls (pkcs11js, main-thread part)"],
  [/\/src\/store\/|\/src\/audit\//, "SQLite + audit"],
  [/\/src\/auth\//, "auth (token check)"],
  [/\/src\/log\//, "logging (pino)"],
  [/\/src\/api\//, "API layer (routes, schemas)"],
  [/\/src\/pki\//, "PKI logic (issuer, role, names)"],
  [/\/src\/ssh-ca\/(keys|certificate|wire)\.ts/, "SSH keys and certificate building"],
  [/\/src\/ssh-ca\//, "SSH CA logic (roles, principals)"],
  [/\/src\//, "other Custos code"],
];

/** Where nothing of ours is on the stack (an async continuation inside a library). */
const LIBRARIES: ReadonlyArray<[RegExp, string]> = [
  [/node_modules\/(@peculiar|asn1js|pvtsutils|pvutils|tslib|reflect-metadata|tsyringe)\//, "x509/asn1 (other)"],
  [/^node:internal\/crypto/, "node:crypto glue"],
  [/^node:/, "node internals (event loop, streams, timers)"],
];

function categoryOf(node: ProfileNode, parent: Map<number, ProfileNode>): string {
  const fn = node.callFrame.functionName;
  if (fn === "(idle)") return "(idle: waiting for the thread pool, fsync, network)";
  if (fn === "(garbage collector)") return "GC";
  if (fn === "(program)") return "(program: V8 and native, unattributed)";
  let firstUrl = "";
  for (let n: ProfileNode | undefined = node; n; n = parent.get(n.id)) {
    const url = n.callFrame.url;
    if (!url) continue;
    if (!firstUrl) firstUrl = url;
    for (const [re, name] of STICKY) if (re.test(url)) return name;
    if (url.includes(`${ROOT}/src/`)) for (const [re, name] of SOURCES) if (re.test(url)) return name;
  }
  // No file of ours on the stack: a continuation after an await inside @peculiar/x509.
  // Its outermost frame says which: the generators' and extensions' `create` build,
  // the CSR's `verify` checks.
  let outerX509 = "";
  for (let n: ProfileNode | undefined = node; n; n = parent.get(n.id)) {
    if (n.callFrame.url.includes("@peculiar/x509/")) outerX509 = n.callFrame.functionName;
  }
  if (outerX509 === "create") return "x509/asn1 building";
  if (outerX509 === "verify") return "CSR parse + verify";
  for (const [re, name] of LIBRARIES) if (re.test(firstUrl)) return name;
  return firstUrl ? `other (${shortUrl(firstUrl).split("/")[0]})` : "native, no JS caller";
}

/**
 * Prints the profile's self time grouped by what it was for, the top functions by
 * self time, and our own functions by inclusive time. Only samples inside `window`
 * (the measured load, µs on the monotonic clock) count, so start-up and warm-up
 * don't.
 */
/**
 * Reports the one CPU profile a server wrote into `dir` (`--cpu-prof-dir`);
 * BENCH_PROFILE_OUT=<file> keeps a copy to open in Chrome DevTools or speedscope.
 */
export function reportProfileIn(dir: string, window: { from: number; to: number }, load: string): void {
  const file = readdirSync(dir).find((f) => f.endsWith(".cpuprofile"));
  if (!file) throw new Error("the server wrote no CPU profile");
  if (process.env.BENCH_PROFILE_OUT) copyFileSync(join(dir, file), process.env.BENCH_PROFILE_OUT);
  reportProfile(join(dir, file), window, load);
}

export function reportProfile(file: string, window: { from: number; to: number }, load: string): void {
  const profile = JSON.parse(readFileSync(file, "utf8")) as CpuProfile;
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, ProfileNode>();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n);
  const self = new Map<number, number>();
  // timeDeltas[i] is the time between sample i-1 and i: charge it to sample i's node.
  let t = profile.startTime;
  for (const [i, id] of profile.samples.entries()) {
    const dt = profile.timeDeltas[i] ?? 0;
    t += dt;
    if (t >= window.from && t <= window.to) self.set(id, (self.get(id) ?? 0) + dt);
  }
  if (self.size === 0) throw new Error("no profile samples inside the measured window");
  const total = [...self.values()].reduce((a, b) => a + b, 0);
  const idleIds = new Set(profile.nodes.filter((n) => n.callFrame.functionName === "(idle)").map((n) => n.id));
  const idle = [...idleIds].reduce((a, id) => a + (self.get(id) ?? 0), 0);
  const busy = total - idle;

  const groups = new Map<string, number>();
  const functions = new Map<string, number>();
  const inclusive = new Map<string, number>();
  // Lines of our own files are those of tsx's output, not of the source: the file says enough.
  const label = (f: ProfileNode["callFrame"]) =>
    `${f.functionName || "(anonymous)"}  ${!f.url ? "(native)" : f.url.includes(`${ROOT}/src/`) ? shortUrl(f.url) : `${shortUrl(f.url)}:${f.lineNumber + 1}`}`;
  for (const [id, us] of self) {
    const node = byId.get(id);
    if (!node) continue;
    const cat = categoryOf(node, parent);
    groups.set(cat, (groups.get(cat) ?? 0) + us);
    if (idleIds.has(id)) continue;
    const key = label(node.callFrame);
    functions.set(key, (functions.get(key) ?? 0) + us);
    // Each of our functions on the stack once, however deep it recurses.
    const seen = new Set<string>();
    for (let n: ProfileNode | undefined = node; n; n = parent.get(n.id)) {
      if (!n.callFrame.url.includes(`${ROOT}/src/`)) continue;
      const k = label(n.callFrame);
      if (seen.has(k)) continue;
      seen.add(k);
      inclusive.set(k, (inclusive.get(k) ?? 0) + us);
    }
  }
  const pct = (us: number, of: number) => `${((100 * us) / of).toFixed(1).padStart(5)}%`;
  console.log(
    `\nserver main thread, ${load}: ${(total / 1e6).toFixed(1)} s sampled during the measured load, busy ${pct(busy, total).trim()} ` +
      "(RSA signing, key generation and the WAL fsync run on libuv's thread pool and are not sampled here)",
  );
  console.log("\nby what the time was spent on (share of busy time; idle as share of all):");
  for (const [cat, us] of [...groups].sort((a, b) => b[1] - a[1])) {
    console.log(`  ${pct(us, cat.startsWith("(idle") ? total : busy)}  ${cat}`);
  }
  console.log("\ntop self-time functions (share of busy time):");
  for (const [key, us] of [...functions].sort((a, b) => b[1] - a[1]).slice(0, 25)) {
    console.log(`  ${pct(us, busy)}  ${key}`);
  }
  console.log(
    "\nCustos functions by inclusive time (share of busy time; an await cuts the stack, so a function's " +
      "continuations count only from where they resume):",
  );
  for (const [key, us] of [...inclusive].sort((a, b) => b[1] - a[1]).slice(0, 20)) {
    console.log(`  ${pct(us, busy)}  ${key}`);
  }
}

// ---- the benchmark -------------------------------------------------------------------
