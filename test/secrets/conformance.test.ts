/**
 * Conformance of versioned secrets and of their delivery by `custos run`, checked
 * against what a user of Vault KV v2 and of envconsul / `vault agent` expects and
 * against docs/broker.md and `custos run --help`. Oracles: the SQLite files, the file
 * system (modes), the child's own view of its environment and files, exit codes.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after, before, describe, test } from "node:test";
import Database from "better-sqlite3";
import { isCustosError } from "../../src/errors/index.js";
import type { App } from "../../src/platform/index.js";
import { type CustosInstance, startCustos } from "../helpers/custos.js";
import { freePort } from "../helpers/ports.js";
import { alive, waitFor } from "../helpers/wait.js";
import { admin, openPlatformFixture, type PlatformFixture } from "../platform/setup.js";

const code = (c: string) => (e: unknown) => isCustosError(e, c as never);

describe("secrets service against Vault KV v2 expectations and docs/broker.md", () => {
  let f: PlatformFixture;
  let web: App;
  before(async () => {
    f = await openPlatformFixture("secrets-conf");
    await f.platform.createOrg(admin, "acme");
    await f.platform.createSpace(admin, "acme", "prod");
    await f.platform.createApp(admin, { org: "acme", space: "prod", app: "web" });
    web = await f.platform.getApp({ org: "acme", space: "prod", app: "web" });
  });
  after(async () => {
    await f?.close();
  });

  test("a whole path of exactly 256 characters is stored and read back; 257 is refused", async () => {
    const app = "acme/prod/web/";
    const name = (chars: number) => {
      const segments = ["a".repeat(64), "b".repeat(64), "c".repeat(64)];
      return `${app}${segments.join("/")}/${"d".repeat(chars - app.length - 3 * 65)}`;
    };
    const exact = name(256);
    assert.equal(exact.length, 256);
    assert.equal((await f.secrets.put(admin, exact, "at-the-limit")).version, 1);
    assert.equal((await f.secrets.read(admin, exact)).value, "at-the-limit");
    assert.equal((await f.secrets.readForApp(web, exact)).value, "at-the-limit");
    await assert.rejects(f.secrets.put(admin, name(257), "one-over"), code("invalid_request"));
  });

  test("segments: 64 characters and 8 segments pass, 65 and 9 don't; Unicode, traversal and empty segments are refused", async () => {
    assert.equal((await f.secrets.put(admin, `acme/prod/web/${"s".repeat(64)}`, "v")).version, 1);
    assert.equal((await f.secrets.put(admin, `acme/prod/web/${Array(8).fill("n").join("/")}`, "v")).version, 1);
    const refused = [
      `acme/prod/web/${"s".repeat(65)}`,
      `acme/prod/web/${Array(9).fill("n").join("/")}`,
      "acme/prod/web/pässword",
      "acme/prod/web/\uff0e\uff0e/api/x", // fullwidth full stops
      "acme/prod/web/a\u0000b",
      "acme/prod/web/a\\..\\b",
      "acme/prod/web/%2e%2e/x",
      "/acme/prod/web/x",
      "acme/prod/web/x/",
      "shared/",
      "shared/../acme/prod/web/x",
      "shared/./x",
    ];
    for (const path of refused) {
      await assert.rejects(f.secrets.put(admin, path, "v"), code("invalid_request"), JSON.stringify(path));
    }
  });

  test("version numbers are never reused: pruning (maxVersions 1), destroy and delete keep counting up", async () => {
    const p = "acme/prod/web/rolling-one";
    // Settings before the first write (docs: PATCH on a missing secret creates its metadata).
    const created = await f.secrets.updateMetadata(admin, p, { maxVersions: 1, casRequired: true });
    assert.equal(created.currentVersion, 0);
    await assert.rejects(f.secrets.read(admin, p), code("not_found"), "metadata alone has no value");
    await assert.rejects(f.secrets.put(admin, p, "no-cas"), code("invalid_request"));
    for (let cas = 0; cas < 3; cas++) await f.secrets.put(admin, p, `value-${cas + 1}`, cas);
    let meta = await f.secrets.metadata(p);
    assert.equal(meta.currentVersion, 3);
    assert.deepEqual(
      meta.versions.map((v) => v.version),
      [3],
    );
    for (const gone of [1, 2]) await assert.rejects(f.secrets.read(admin, p, gone), code("not_found"));
    await f.secrets.destroyVersions(admin, p, [3]);
    await assert.rejects(f.secrets.put(admin, p, "stale", 2), code("conflict"));
    assert.equal((await f.secrets.put(admin, p, "value-4", 3)).version, 4, "cas counts a destroyed version");
    await f.secrets.deleteVersions(admin, p);
    assert.equal((await f.secrets.put(admin, p, "value-5", 4)).version, 5);
    meta = await f.secrets.metadata(p);
    assert.deepEqual(
      meta.versions.map((v) => [v.version, v.state]),
      [[5, "live"]],
    );
    assert.equal((await f.secrets.read(admin, p)).value, "value-5");
  });

  test("concurrent writers with the same cas: exactly one wins, the rest are conflict", async () => {
    const p = "acme/prod/web/cas-race";
    await f.secrets.put(admin, p, "base");
    const results = await Promise.allSettled(Array.from({ length: 6 }, (_, i) => f.secrets.put(admin, p, `c${i}`, 1)));
    assert.equal(results.filter((r) => r.status === "fulfilled").length, 1);
    for (const r of results) if (r.status === "rejected") assert.ok(code("conflict")(r.reason));
    assert.equal((await f.secrets.metadata(p)).currentVersion, 2);
  });

  test("concurrent writers without cas all succeed, each with its own version (conflict is for cas only)", async () => {
    const p = "acme/prod/web/plain-race";
    const results = await Promise.allSettled(Array.from({ length: 6 }, (_, i) => f.secrets.put(admin, p, `v${i}`)));
    const failed = results.flatMap((r) => (r.status === "rejected" ? [String(r.reason)] : []));
    assert.deepEqual(failed, []);
    const versions = results.map((r) => (r.status === "fulfilled" ? r.value.version : 0));
    assert.deepEqual(
      versions.sort((a, b) => a - b),
      [1, 2, 3, 4, 5, 6],
    );
  });

  test("a destroyed version's ciphertext is erased for good: not in the database file nor its WAL", async () => {
    const p = "acme/prod/web/to-destroy";
    await f.secrets.put(admin, p, "destroy-me");
    const ciphertext = (await f.store.secrets.getSecretVersion(p, 1))?.ciphertext;
    assert.ok(ciphertext);
    await f.secrets.destroyVersions(admin, p, [1]);
    const left = [f.dbPath, `${f.dbPath}-wal`].filter(
      (file) => existsSync(file) && readFileSync(file).includes(ciphertext),
    );
    if (left.length > 0) {
      // What a copy of the data directory gives back while the app's key lives.
      const opened = await f.kms.openFor(web.keyName, ciphertext, { secret: p, version: "1" });
      assert.fail(
        `the ciphertext of destroyed version 1 is in ${left.join(", ")} and opens to "${opened.exposeText()}"`,
      );
    }
  });

  test("concurrent metadata updates, deletes and undeletes without cas all succeed", async () => {
    const p = "acme/prod/web/plain-mutations";
    for (let i = 0; i < 3; i++) await f.secrets.put(admin, p, `v${i}`);
    const changes = Array.from({ length: 20 }, (_, i) => {
      if (i % 4 === 1) return f.secrets.deleteVersions(admin, p, [1]);
      if (i % 4 === 3) return f.secrets.undeleteVersions(admin, p, [1]);
      return f.secrets.updateMetadata(admin, p, { customMetadata: { writer: String(i) } });
    });
    const failed = (await Promise.allSettled(changes)).flatMap((r) =>
      r.status === "rejected" ? [String(r.reason)] : [],
    );
    assert.deepEqual(failed, []);
    const recorded = (await f.records()).filter((r) => r.resource === `secret/${p}` && r.action !== "secret.write");
    assert.equal(recorded.length, 20);
  });

  test("a destroy whose WAL checkpoint a reader holds up erases the WAL once the reader is gone", async () => {
    const p = "acme/prod/web/destroy-while-read";
    await f.secrets.put(admin, p, "destroy-me-later");
    const ciphertext = (await f.store.secrets.getSecretVersion(p, 1))?.ciphertext;
    assert.ok(ciphertext);
    // Another process's open read transaction pins the WAL: no checkpoint can reset it.
    const reader = new Database(f.dbPath);
    try {
      reader.exec("BEGIN");
      reader.prepare("SELECT count(*) FROM secret_versions").get();
      await f.secrets.destroyVersions(admin, p, [1]);
      assert.ok(readFileSync(`${f.dbPath}-wal`).includes(ciphertext), "the reader still needs the old frames");
      reader.exec("COMMIT");
    } finally {
      reader.close();
    }
    await waitFor("the WAL to be erased", () => !readFileSync(`${f.dbPath}-wal`).includes(ciphertext));
    assert.ok(!readFileSync(f.dbPath).includes(ciphertext));
  });

  test("deleting an app erases its key's wrapped material and its secrets' ciphertexts from the file and the WAL", async () => {
    await f.platform.createApp(admin, { org: "acme", space: "prod", app: "gone" });
    const gone = await f.platform.getApp({ org: "acme", space: "prod", app: "gone" });
    await f.secrets.put(admin, "acme/prod/gone/token", "shred-me");
    const key = await f.store.getKey(gone.keyName);
    assert.ok(key);
    const wrapped = (await f.store.listKeyVersions(key.id)).map((v) => v.wrappedKey);
    const ciphertext = (await f.store.secrets.getSecretVersion("acme/prod/gone/token", 1))?.ciphertext;
    assert.ok(wrapped[0] && ciphertext);
    await f.platform.deleteApp(admin, { org: "acme", space: "prod", app: "gone" });
    for (const file of [f.dbPath, `${f.dbPath}-wal`]) {
      const bytes = readFileSync(file);
      assert.ok(!bytes.includes(wrapped[0]), `the wrapped key is in ${file}`);
      assert.ok(!bytes.includes(ciphertext), `the ciphertext is in ${file}`);
    }
  });

  test("custom metadata limits: 16 entries, keys up to 128 and values up to 512 characters", async () => {
    const p = "acme/prod/web/meta";
    await f.secrets.put(admin, p, "v");
    const ok = { ["k".repeat(128)]: "v".repeat(512), empty: "" };
    assert.deepEqual((await f.secrets.updateMetadata(admin, p, { customMetadata: ok })).customMetadata, ok);
    for (const bad of [{ ["k".repeat(129)]: "v" }, { k: "v".repeat(513) }, { "": "v" }]) {
      await assert.rejects(f.secrets.updateMetadata(admin, p, { customMetadata: bad }), code("invalid_request"));
    }
  });

  test("custom metadata counts characters as docs/broker.md says: 512 astral characters are 512 characters", async () => {
    const p = "acme/prod/web/meta";
    const value = "\u{1F511}".repeat(512);
    assert.equal([...value].length, 512);
    const meta = await f.secrets.updateMetadata(admin, p, { customMetadata: { keys: value } });
    assert.equal(meta.customMetadata.keys, value);
  });

  test("generate draws without modulo bias: a 200-character alphabet is uniform, not favouring its first 56", async () => {
    // A byte reduced modulo 200 would give the first 56 characters twice the weight
    // (112/256 of the draws instead of 56/200): far outside this test's margin.
    const alphabet = Array.from({ length: 200 }, (_, i) => String.fromCodePoint(0x4e00 + i)).join("");
    const favoured = new Set([...alphabet].slice(0, 56));
    let draws = 0;
    let hits = 0;
    for (let i = 0; i < 5; i++) {
      const p = `acme/prod/web/gen/uniform-${i}`;
      await f.secrets.generate(admin, p, { length: 1024, alphabet });
      for (const c of (await f.secrets.read(admin, p)).value) {
        assert.ok(alphabet.includes(c), "a character outside the alphabet");
        draws += 1;
        if (favoured.has(c)) hits += 1;
      }
    }
    assert.equal(draws, 5 * 1024);
    const expected = draws * (56 / 200);
    const sd = Math.sqrt(draws * (56 / 200) * (144 / 200));
    assert.ok(Math.abs(hits - expected) < 6 * sd, `${hits} of ${draws} draws in the first 56 (expected ~${expected})`);
    // 256 distinct characters is the documented maximum; 257 is one over.
    const wide = Array.from({ length: 257 }, (_, i) => String.fromCodePoint(0x4e00 + i)).join("");
    const at256 = await f.secrets.generate(admin, "acme/prod/web/gen/wide", {
      length: 8,
      alphabet: wide.slice(0, 256),
    });
    assert.equal(at256.version, 1);
    await assert.rejects(
      f.secrets.generate(admin, "acme/prod/web/gen/wide", { length: 8, alphabet: wide }),
      code("invalid_request"),
    );
  });

  test("a folder grant covers what is under shared/<folder>/ now and later, nothing beside it", async () => {
    const values: Record<string, string> = {
      "shared/tls/a": "in-a",
      "shared/tls/sub/b": "in-b",
      "shared/tls": "beside-exact",
      "shared/tls-x/c": "beside-dash",
      "shared/tlsx": "beside-prefix",
    };
    for (const [p, v] of Object.entries(values)) await f.secrets.put(admin, p, v);
    await f.secrets.grant(admin, "shared/tls/", ["acme/prod/web"]);
    await f.secrets.put(admin, "shared/tls/later", "in-later");
    const delivered = (await f.secrets.forApp(web)).filter((s) => s.path.startsWith("shared/"));
    assert.deepEqual(delivered.map((s) => s.path).sort(), ["shared/tls/a", "shared/tls/later", "shared/tls/sub/b"]);
    assert.equal((await f.secrets.readForApp(web, "shared/tls/later")).value, "in-later");
    for (const p of ["shared/tls", "shared/tls-x/c", "shared/tlsx"]) {
      await assert.rejects(f.secrets.readForApp(web, p), code("forbidden"), p);
    }
  });
});

// ---- custos run ------------------------------------------------------------------

const BIN = join(resolve(import.meta.dirname, "../.."), "bin/custos.js");

interface Running {
  readonly proc: ChildProcess;
  stdout: string;
  stderr: string;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

function lines(file: string): string[] {
  return existsSync(file) ? readFileSync(file, "utf8").trim().split("\n") : [];
}

describe("custos run against envconsul / vault agent expectations and its --help", () => {
  let custos: CustosInstance;
  let work: string;
  let caFile: string;
  let agentToken: string;
  const planted: string[] = [];
  const strays: number[] = [];

  const ok = async (method: string, path: string, body?: unknown, bearer?: string) => {
    const r = await custos.call(method, path, body, bearer);
    assert.ok(r.status >= 200 && r.status < 300, `${method} ${path}: ${r.status} ${r.text}`);
    return r.body as Record<string, unknown>;
  };
  const plant = (what: string) => {
    const v = `PLANTED-${what}-${randomBytes(8).toString("hex")}`;
    planted.push(v);
    return v;
  };
  /** A fresh app of its own (automatic env takes every secret of the app). */
  const newApp = async (name: string, secrets: Record<string, string>) => {
    await ok("POST", "/v1/platform/orgs/acme/spaces/prod/apps", { name });
    for (const [n, value] of Object.entries(secrets)) {
      await ok("PUT", `/v1/secrets/data/acme/prod/${name}/${n}`, { value });
    }
    const r = await ok(
      "POST",
      "/v1/broker/instances",
      { org: "acme", space: "prod", app: name, instance: `${name}-1` },
      agentToken,
    );
    return { CUSTOS_BOOTSTRAP_TOKEN: r.bootstrapToken as string, CUSTOS_INSTANCE_ID: `${name}-1` };
  };
  const launch = (args: string[], env: Record<string, string>, address = custos.url): Running => {
    const proc = spawn(process.execPath, [BIN, "run", ...args], {
      env: { PATH: process.env.PATH ?? "", CUSTOS_ADDR: address, CUSTOS_CACERT: caFile, ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    const running: Running = {
      proc,
      stdout: "",
      stderr: "",
      exited: new Promise((done) => proc.once("exit", (c, s) => done({ code: c, signal: s }))),
    };
    proc.stdout?.on("data", (c: Buffer) => {
      running.stdout += c.toString("utf8");
    });
    proc.stderr?.on("data", (c: Buffer) => {
      running.stderr += c.toString("utf8");
    });
    return running;
  };

  before(async () => {
    custos = await startCustos();
    work = mkdtempSync(join(tmpdir(), "custos-secrets-conf-"));
    caFile = join(work, "custos-ca.pem");
    writeFileSync(caFile, custos.ca);
    agentToken = (await ok("POST", "/v1/auth/tokens", { name: "node-agent", policies: ["platform-agent"] }))
      .token as string;
    await ok("POST", "/v1/platform/orgs", { name: "acme" });
    await ok("POST", "/v1/platform/orgs/acme/spaces", { name: "prod" });
  });
  after(async () => {
    for (const pid of strays) if (alive(pid)) process.kill(pid, "SIGKILL");
    await custos?.dispose();
    if (work) rmSync(work, { recursive: true, force: true });
  });

  test("values with template syntax, newlines and shell metacharacters arrive verbatim, executed nowhere", async () => {
    const marker = join(work, "pwned");
    const value = `${plant("inj")}\n{{ jwt }} }}{{ "x" $(touch ${marker}) \`touch ${marker}\` '"; touch ${marker} #`;
    const env = await newApp("inj", { inj: value });
    const template = join(work, "inj.tmpl");
    const rendered = join(work, "inj.conf");
    const seen = join(work, "inj.env");
    writeFileSync(template, 'before {{ secret "inj" }} after\n');
    // The child's own view, through a shell: what $INJ holds, written out byte for byte.
    const run = launch(
      [
        "--dir",
        join(work, "inj-creds"),
        "--template",
        `${template}:${rendered}`,
        "--shell",
        "--",
        `printf '%s' "$INJ" > "$SEEN"`,
      ],
      { ...env, SEEN: seen },
    );
    const end = await run.exited;
    assert.equal(end.code, 0, run.stderr);
    assert.equal(readFileSync(seen, "utf8"), value);
    assert.equal(readFileSync(rendered, "utf8"), `before ${value} after\n`);
    assert.equal(statSync(rendered).mode & 0o777, 0o600);
    assert.ok(!existsSync(marker), "a metacharacter in a value was executed");
    assert.ok(!run.stderr.includes(value.split("\n")[0] ?? "-"), "the value reached custos run's log");
  });

  test("a value that can't go into the environment (a NUL byte) is refused without printing the value", async () => {
    const head = plant("nul");
    const env = await newApp("nul", { token: `${head}\u0000tail` });
    const ran = join(work, "nul-ran");
    const run = launch(
      [
        "--dir",
        join(work, "nul-creds"),
        "--",
        process.execPath,
        "-e",
        `require("node:fs").writeFileSync(${JSON.stringify(ran)}, "")`,
      ],
      env,
    );
    const end = await run.exited;
    assert.ok(!run.stderr.includes(head), `the secret is in custos run's log:\n${run.stderr}`);
    assert.notEqual(end.code, 0);
    assert.notEqual(end.code, 2, "2 means Custos unreachable (--help)");
    assert.ok(!existsSync(ran));
  });

  test("--on-change restart with a new value that can't be started: custos run never lingers without its app", async () => {
    const env = await newApp("rst", { token: "first-value" });
    const events = join(work, "rst-events");
    const app = `require("node:fs").appendFileSync(${JSON.stringify(events)}, process.pid + "\\n");
        process.on("SIGTERM", () => process.exit(0)); setInterval(() => {}, 1000);`;
    const run = launch(
      ["--dir", join(work, "rst-creds"), "--poll", "1", "--on-change", "restart", "--", process.execPath, "-e", app],
      env,
    );
    try {
      await waitFor("the app", () => lines(events).length === 1);
      const head = plant("rst");
      await ok("PUT", "/v1/secrets/data/acme/prod/rst/token", { value: `${head}\u0000` });
      await waitFor(
        "the restart to fail or custos run to end",
        () => run.proc.exitCode !== null || /restarting the app[\s\S]*warning/.test(run.stderr),
      );
      const appRuns = lines(events).some((pid) => alive(Number(pid)));
      assert.ok(run.proc.exitCode !== null || appRuns, `custos run runs on without an app:\n${run.stderr}`);
      assert.ok(!run.stderr.includes(head), `the secret is in custos run's log:\n${run.stderr}`);
    } finally {
      // A SIGKILLed custos run leaves its app behind, holding the test's pipes open.
      for (const pid of lines(events)) strays.push(Number(pid));
      if (run.proc.exitCode === null) run.proc.kill("SIGKILL");
    }
  });

  test("a signal custos run doesn't forward must not end it while the app runs on (SIGUSR2)", async () => {
    const env = await newApp("sig", { token: "sig-value" });
    const events = join(work, "sig-events");
    const app = `const fs = require("node:fs"); const note = (t) => fs.appendFileSync(${JSON.stringify(events)}, t + "\\n");
        note("start " + process.pid); process.on("SIGUSR2", () => note("usr2")); process.on("SIGUSR1", () => note("usr1"));
        process.on("SIGTERM", () => process.exit(3)); setInterval(() => {}, 1000);`;
    const run = launch(["--dir", join(work, "sig-creds"), "--", process.execPath, "-e", app], env);
    try {
      await waitFor("the app", () => lines(events).some((l) => l.startsWith("start ")));
      const pid = Number(lines(events)[0]?.split(" ")[1]);
      strays.push(pid);
      run.proc.kill("SIGUSR2");
      await waitFor(
        "the app to hear of it or custos run to end",
        () => lines(events).includes("usr2") || run.proc.exitCode !== null || run.proc.signalCode !== null,
      );
      assert.ok(
        run.proc.exitCode === null && run.proc.signalCode === null,
        `custos run ended (${run.proc.signalCode}) leaving app ${pid} ${alive(pid) ? "running" : "gone"}`,
      );
      // Node opens its inspector on SIGUSR1 unless the signal has a listener.
      run.proc.kill("SIGUSR1");
      await waitFor("the app to hear of SIGUSR1", () => lines(events).includes("usr1"));
      assert.doesNotMatch(run.stderr, /Debugger listening/);
      run.proc.kill("SIGTERM");
      assert.equal((await run.exited).code, 3, "the app's own exit code comes back");
    } finally {
      if (run.proc.exitCode === null && run.proc.signalCode === null) run.proc.kill("SIGKILL");
    }
  });

  test("SIGINT is passed on and the app's end by it comes back as 130", async () => {
    const env = await newApp("int", { token: "int-value" });
    const ready = join(work, "int-ready");
    const app = `require("node:fs").writeFileSync(${JSON.stringify(ready)}, ""); setInterval(() => {}, 1000);`;
    const run = launch(["--dir", join(work, "int-creds"), "--", process.execPath, "-e", app], env);
    await waitFor("the app", () => existsSync(ready));
    run.proc.kill("SIGINT");
    assert.deepEqual(await run.exited, { code: 130, signal: null });
  });

  test("Custos unreachable at start: exit 2, the app never starts", async () => {
    const port = await freePort();
    const ran = join(work, "unreachable-ran");
    const run = launch(
      [
        "--dir",
        join(work, "unreachable-creds"),
        "--",
        process.execPath,
        "-e",
        `require("node:fs").writeFileSync(${JSON.stringify(ran)}, "")`,
      ],
      { CUSTOS_BOOTSTRAP_TOKEN: "cbt.x.y", CUSTOS_INSTANCE_ID: "nobody-1" },
      `https://127.0.0.1:${port}`,
    );
    assert.equal((await run.exited).code, 2, run.stderr);
    assert.match(run.stderr, /unavailable/);
    assert.ok(!existsSync(ran));
  });

  test("no delivered value, generated ones included, is in the database, its WAL or the server log", async () => {
    await ok("POST", "/v1/secrets/generate/acme/prod/inj/generated", { length: 48 });
    const generated = (await ok("GET", "/v1/secrets/data/acme/prod/inj/generated")).value as string;
    const all = [...planted, generated];
    assert.ok(all.length >= 4);
    const files = ["custos.db", "custos.db-wal", "server.log"].map((n) => join(custos.dir, n)).filter(existsSync);
    assert.equal(files.length, 3);
    for (const file of files) {
      const bytes = readFileSync(file);
      for (const value of all) {
        for (const form of [value, Buffer.from(value).toString("base64"), Buffer.from(value).toString("hex")]) {
          assert.equal(bytes.indexOf(form), -1, `a value found in ${file}`);
        }
      }
    }
  });
});
