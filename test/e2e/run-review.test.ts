/**
 * A review of `custos run` (src/cli/commands/run.ts, src/agent/run*.ts, the broker
 * client) against a real Custos, with real processes: `node bin/custos.js run` as a
 * container's entry point starts it, and the oracles are the processes themselves
 * (/proc/<pid>/environ, cmdline and children, what the app notes it received, exit
 * statuses), openssl and node:crypto on the files written, the server's own records
 * (the SQLite database read directly, /v1/pki/chain.pem, introspection) and the
 * words of `custos run --help`, the README and docs/broker.md. What
 * test/e2e/run.test.ts, test/run/*.test.ts and test/agent/agent-second-review.test.ts
 * check is not repeated.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { createPrivateKey, X509Certificate } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { createServer, type Server, type Socket, connect as tcpConnect } from "node:net";
import { constants, tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { after, before, describe, test } from "node:test";
import { type CustosInstance, startCustos } from "../helpers/custos.js";
import { follow, type Running } from "../helpers/process.js";
import { alive, waitFor } from "../helpers/wait.js";

type Json = Record<string, unknown>;

const BIN = join(resolve(import.meta.dirname, "../.."), "bin/custos.js");
const PATH = `${dirname(process.execPath)}:/usr/bin:/bin`;

/** Values no log, argv or foreign environment may show. */
const DB_PASSWORD = "review-db-password-c4f1";
const API_KEY = "review-api-key-8d2e";
const BUNDLE = "review-shared-bundle-77aa";
const OTHER_APP_SECRET = "review-other-app-queue-5b90";
const ROTATED = "review-db-password-rotated-e3d0";
const LEVEL_1 = "review-level-one-2c11";
const LEVEL_2 = "review-level-two-9f02";
const NUL_LEVEL = "review-level-nul-41bd";
const NOISY = "review-noisy-value-0c3a";

const SIGNAL_NUMBER = constants.signals as Record<string, number>;

const pemBlocks = (text: string): string[] =>
  text.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];

const lines = (file: string): string[] =>
  existsSync(file)
    ? readFileSync(file, "utf8")
        .split("\n")
        .filter((l) => l !== "")
    : [];

function openssl(args: string[]): { status: number; out: string } {
  const r = spawnSync("openssl", args, { encoding: "utf8" });
  return { status: r.status ?? -1, out: `${r.stdout}${r.stderr}` };
}

/** The pids of `pid`'s children, as the kernel lists them. */
function childrenOf(pid: number): number[] {
  const file = `/proc/${pid}/task/${pid}/children`;
  if (!existsSync(file)) return [];
  return readFileSync(file, "utf8")
    .trim()
    .split(/\s+/)
    .filter((p) => p !== "")
    .map(Number);
}

/** A process's environment, read by the kernel's account (not what it says of itself). */
function environOf(pid: number): Map<string, string> {
  const vars = new Map<string, string>();
  for (const entry of readFileSync(`/proc/${pid}/environ`, "utf8").split("\0")) {
    const at = entry.indexOf("=");
    if (at > 0) vars.set(entry.slice(0, at), entry.slice(at + 1));
  }
  return vars;
}

/** A node app that notes what happens to it in `events` ("start <pid>" first) and idles; `extra` runs before. */
function noting(events: string, extra = ""): string[] {
  const code = `
    const fs = require("node:fs");
    const note = (t) => fs.appendFileSync(${JSON.stringify(events)}, t + "\\n");
    ${extra}
    note("start " + process.pid);
    setInterval(() => {}, 1000);`;
  return [process.execPath, "-e", code];
}

const startedPid = (events: string): number =>
  Number(
    lines(events)
      .find((l) => l.startsWith("start "))
      ?.split(" ")[1] ?? Number.NaN,
  );

/**
 * A TCP relay in front of Custos: passes bytes through, or in "hang" mode accepts
 * connections and never answers (a Custos that hangs rather than refuses).
 */
class Relay {
  readonly #target: number;
  readonly #sockets = new Set<Socket>();
  #server: Server | undefined;
  mode: "pass" | "hang" = "pass";
  port = 0;

  constructor(target: number) {
    this.#target = target;
  }

  async start(): Promise<void> {
    this.#server = createServer((client) => {
      this.#sockets.add(client);
      client.on("close", () => this.#sockets.delete(client));
      client.on("error", () => {});
      if (this.mode === "hang") return;
      const upstream = tcpConnect(this.#target, "127.0.0.1");
      this.#sockets.add(upstream);
      upstream.on("close", () => this.#sockets.delete(upstream));
      upstream.on("error", () => client.destroy());
      client.on("close", () => upstream.destroy());
      upstream.on("close", () => client.destroy());
      client.pipe(upstream).pipe(client);
    });
    await new Promise<void>((ok) => this.#server?.listen(0, "127.0.0.1", ok));
    const address = this.#server.address();
    this.port = typeof address === "object" && address !== null ? address.port : 0;
  }

  /** From now on connections hang; those open now (keep-alive ones included) are cut. */
  hang(): void {
    this.mode = "hang";
    for (const s of this.#sockets) s.destroy();
  }

  async close(): Promise<void> {
    for (const s of this.#sockets) s.destroy();
    await new Promise<void>((ok) => (this.#server ? this.#server.close(() => ok()) : ok()));
  }
}

describe("custos run: review with real processes", () => {
  let custos: CustosInstance;
  let work: string;
  let caFile: string;
  let agent: string;
  const started: ChildProcess[] = [];
  const strays: number[] = [];

  const api = async (method: string, path: string, body?: unknown, bearer?: string | null): Promise<Json> => {
    const r = await custos.call(method, path, body, bearer);
    assert.ok(r.status >= 200 && r.status < 300, `${method} ${path}: ${r.status} ${r.text}`);
    return r.body as Json;
  };

  /** The platform agent registers instance `id` of acme/prod/<app>: its bootstrap token. */
  const register = async (id: string, app = "web"): Promise<string> => {
    const body = { org: "acme", space: "prod", app, instance: id };
    return String((await api("POST", "/v1/broker/instances", body, agent)).bootstrapToken);
  };

  interface LaunchOptions {
    /** Its own session and process group, as a terminal's job or a container's init has. */
    readonly detached?: boolean;
    readonly stdin?: string;
    /** The environment as given, instead of the usual one with `env` added. */
    readonly bareEnv?: boolean;
    /** Run through `sh -c 'umask <it>; exec ...'`. */
    readonly umask?: string;
  }

  /** `custos run <args>` as a container's entry point runs it. */
  const launch = (args: string[], env: Record<string, string>, o: LaunchOptions = {}): Running => {
    const environment = o.bareEnv ? env : { PATH, CUSTOS_ADDR: custos.url, CUSTOS_CACERT: caFile, HOME: work, ...env };
    const argv = [BIN, "run", ...args];
    const [file, words] =
      o.umask === undefined
        ? [process.execPath, argv]
        : ["/bin/sh", ["-c", `umask ${o.umask}; exec "$0" "$@"`, process.execPath, ...argv]];
    const proc = spawn(file, words, {
      env: environment,
      detached: o.detached === true,
      stdio: [o.stdin === undefined ? "ignore" : "pipe", "pipe", "pipe"],
    });
    if (o.stdin !== undefined) proc.stdin?.end(o.stdin);
    started.push(proc);
    return follow(proc);
  };

  const instanceEnv = (id: string, token: string): Record<string, string> => ({
    CUSTOS_BOOTSTRAP_TOKEN: token,
    CUSTOS_INSTANCE_ID: id,
  });

  /** Whether the instance's bootstrap token is still unspent, by the server's own table. */
  const tokenState = (id: string): string | undefined =>
    custos.query<{ state: string }>("SELECT state FROM broker_tokens WHERE instance_id = ?", id)[0]?.state;

  before(async () => {
    // The shortest lives Custos allows, so a JWT refresh happens while a test watches.
    custos = await startCustos({ broker: { identityTtlSeconds: 60, jwtTtlSeconds: 30 } });
    work = mkdtempSync(join(tmpdir(), "custos-run-review-"));
    caFile = join(work, "custos-ca.pem");
    writeFileSync(caFile, custos.ca);
    agent = String((await api("POST", "/v1/auth/tokens", { name: "node-agent", policies: ["platform-agent"] })).token);
    await api("POST", "/v1/platform/orgs", { name: "acme" });
    await api("POST", "/v1/platform/orgs/acme/spaces", { name: "prod" });
    for (const name of ["web", "api", "rot", "plain", "nodeapp", "noisy"]) {
      await api("POST", "/v1/platform/orgs/acme/spaces/prod/apps", { name });
    }
    await api("PUT", "/v1/secrets/data/acme/prod/web/db/password", { value: DB_PASSWORD });
    await api("PUT", "/v1/secrets/data/acme/prod/web/api-key", { value: API_KEY });
    await api("PUT", "/v1/secrets/data/acme/prod/api/queue/token", { value: OTHER_APP_SECRET });
    await api("PUT", "/v1/secrets/data/shared/bundle", { value: BUNDLE });
    await api("PUT", "/v1/secrets/grants/shared/bundle", { apps: ["acme/prod/web"] });
    await api("PUT", "/v1/secrets/data/acme/prod/rot/level", { value: LEVEL_1 });
    await api("PUT", "/v1/secrets/data/acme/prod/rot/level", { value: LEVEL_2 });
    await api("PUT", "/v1/secrets/data/acme/prod/noisy/value", { value: NOISY });
  });

  after(async () => {
    for (const p of started) if (p.exitCode === null && p.signalCode === null) p.kill("SIGKILL");
    for (const pid of strays) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // gone already
      }
    }
    await custos?.dispose();
    if (work) rmSync(work, { recursive: true, force: true });
  });

  test("every signal custos run passes on reaches the app exactly once, in order; the app's exit code is custos run's; stdout is the app's alone", async () => {
    const id = "sig-all";
    const events = join(work, `${id}-events`);
    const handlers = `
      for (const s of ["SIGHUP", "SIGINT", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGWINCH"]) process.on(s, () => note(s));
      process.on("SIGTERM", () => { note("SIGTERM"); process.exit(42); });
      process.stdout.write("app-out\\n");`;
    const run = launch(
      ["--dir", join(work, id), "--", ...noting(events, handlers)],
      instanceEnv(id, await register(id)),
    );
    await waitFor("the app to start", () => lines(events).length > 0);
    const order = ["SIGUSR1", "SIGUSR2", "SIGWINCH", "SIGHUP", "SIGINT", "SIGQUIT"] as const;
    for (const [i, signal] of order.entries()) {
      run.proc.kill(signal);
      await waitFor(`${signal} to reach the app`, () => lines(events).length >= i + 2);
      assert.equal(run.proc.exitCode, null, `custos run ended on ${signal}:\n${run.stderr}`);
    }
    run.proc.kill("SIGTERM");
    assert.equal(await run.exited, 42, run.stderr);
    assert.equal(run.proc.signalCode, null, "custos run exits with a code, it isn't killed");
    assert.deepEqual(lines(events).slice(1), [...order, "SIGTERM"], "each signal once, in the order sent");
    assert.equal(run.stdout, "app-out\n", "custos run writes nothing of its own to stdout");
    assert.ok(!/Debugger listening/.test(run.stderr), run.stderr);
  });

  test("an app a signal kills: custos run exits 128 + its number (SIGWINCH alone leaves it running)", async () => {
    const signals = ["SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2"] as const;
    const runs = await Promise.all(
      signals.map(async (signal) => {
        const id = `die-${signal.slice(3).toLowerCase()}`;
        const run = launch(["--dir", join(work, id), "--", "sleep", "600"], instanceEnv(id, await register(id)));
        await waitFor(`${id}'s app to start`, () => /custos run: started sleep/.test(run.stderr));
        const apps = childrenOf(run.proc.pid ?? 0);
        assert.equal(apps.length, 1, `${id}: custos run has one child, the app`);
        // Node ignores SIGPIPE and custos run listens for seven signals: none of that may reach the app. Only the
        // standard signals (1-31) are custos run's to reset; a real-time one ignored above it is inherited as is.
        const status = readFileSync(`/proc/${apps[0]}/status`, "utf8");
        const ignored = BigInt(`0x${/^SigIgn:\s+([0-9a-f]+)$/m.exec(status)?.[1] ?? "ffffffff"}`);
        assert.equal(ignored & 0x7fffffffn, 0n, `${id}: the app starts with signals ignored`);
        assert.match(status, /^SigBlk:\s+0+$/m, `${id}: the app starts with signals blocked`);
        return { signal, run, app: apps[0] as number };
      }),
    );
    for (const { signal, run, app } of runs) {
      // sleep ignores SIGWINCH: passed on first, it must not end anything.
      if (signal === "SIGTERM") run.proc.kill("SIGWINCH");
      run.proc.kill(signal);
      const code = await run.exited;
      assert.equal(code, 128 + (SIGNAL_NUMBER[signal] ?? 0), `${signal}: ${run.stderr}`);
      assert.ok(!alive(app), `${signal}: the app outlived custos run`);
    }
  });

  test("exit codes pass through: 0, 3, 255, and 139 for an app that dies of SIGSEGV; stdin reaches the app", async () => {
    const cases: Array<[string, number]> = [
      ["exit 0", 0],
      ["exit 3", 3],
      ["exit 255", 255],
      ["kill -SEGV $$", 139],
    ];
    await Promise.all(
      cases.map(async ([script, expected], i) => {
        const id = `code-${i}`;
        const run = launch(
          ["--dir", join(work, id), "--", "/bin/sh", "-c", script],
          instanceEnv(id, await register(id)),
        );
        assert.equal(await run.exited, expected, `${script}: ${run.stderr}`);
        assert.equal(run.stdout, "");
      }),
    );
    const id = "stdin";
    const run = launch(["--dir", join(work, id), "--", "cat"], instanceEnv(id, await register(id)), {
      stdin: "piped into custos run\n",
    });
    assert.equal(await run.exited, 0, run.stderr);
    assert.equal(run.stdout, "piped into custos run\n");
  });

  test("a signal to custos run's whole process group (Ctrl-C at a terminal, kill -- -<pgid>) reaches the app once, not twice", async () => {
    const id = "pgrp-int";
    const events = join(work, `${id}-events`);
    const handler = 'process.on("SIGINT", () => note("SIGINT")); process.on("SIGTERM", () => process.exit(0));';
    const run = launch(
      ["--dir", join(work, id), "--", ...noting(events, handler)],
      instanceEnv(id, await register(id)),
      {
        detached: true,
      },
    );
    const pgid = run.proc.pid ?? 0;
    await waitFor("the app to start", () => lines(events).length > 0);
    // Pending signals of one kind merge, so one press may show once by luck: five, each given time to land.
    for (let i = 1; i <= 5; i++) {
      process.kill(-pgid, "SIGINT");
      await waitFor(`press ${i} to reach the app`, () => lines(events).length > i);
      await new Promise((r) => setTimeout(r, 300));
    }
    run.proc.kill("SIGTERM");
    assert.equal(await run.exited, 0, run.stderr);
    assert.equal(lines(events).filter((l) => l === "SIGINT").length, 5, "the app got each Ctrl-C more than once");
  });

  test("SIGTERM to custos run ends the app's whole process group: nothing the app started outlives the run", async () => {
    const id = "pgrp-term";
    const pidFile = join(work, `${id}-grandchild`);
    const script = `sleep 600 & echo $! > ${pidFile}; wait`;
    const run = launch(["--dir", join(work, id), "--", "/bin/sh", "-c", script], instanceEnv(id, await register(id)), {
      detached: true,
    });
    await waitFor("the app's child to start", () => lines(pidFile).length > 0);
    const grandchild = Number(lines(pidFile)[0]);
    strays.push(grandchild);
    assert.ok(alive(grandchild));
    run.proc.kill("SIGTERM");
    assert.equal(await run.exited, 143, run.stderr);
    await waitFor("the app's child to end", () => !alive(grandchild), 5000).catch(() => undefined);
    assert.ok(!alive(grandchild), "a process the app started outlived custos run");
  });

  test("an app started at a terminal keeps it as its controlling terminal: it can open /dev/tty, as a password prompt does", async () => {
    const id = "tty";
    const quote = (word: string): string => `'${word.replaceAll("'", "'\\''")}'`;
    const app = "exec 3</dev/tty && echo tty-ok";
    const command = [process.execPath, BIN, "run", "--dir", join(work, id), "--", "/bin/sh", "-c", app];
    // script(1) gives custos run a pseudo-terminal as its stdio and controlling terminal, as an interactive shell would.
    const proc = spawn("script", ["-qec", command.map(quote).join(" "), "/dev/null"], {
      env: {
        PATH,
        CUSTOS_ADDR: custos.url,
        CUSTOS_CACERT: caFile,
        TERM: "dumb",
        ...instanceEnv(id, await register(id)),
      },
      stdio: ["pipe", "pipe", "pipe"],
    });
    started.push(proc);
    const run = follow(proc);
    const code = await run.exited;
    proc.stdin?.destroy();
    assert.match(run.stdout, /tty-ok/, `the app could not open its terminal:\n${run.stdout}${run.stderr}`);
    assert.equal(code, 0, run.stdout);
  });

  test("as a container's PID 1 (its own PID namespace): SIGTERM from outside ends the app with its code, and orphans the app leaves behind are reaped, not left as zombies", async () => {
    const id = "pid-one";
    const ready = join(work, `${id}-ready`);
    // Two helpers the app starts and disowns (as daemonising tools do): they become PID 1's children, and end.
    const script = `(sleep 0.2 &); (sleep 0.2 &); echo up > ${ready}; trap 'exit 7' TERM; sleep 600 & wait`;
    const proc = spawn(
      "unshare",
      [
        "--fork",
        "--pid",
        "--mount-proc",
        process.execPath,
        BIN,
        "run",
        "--dir",
        join(work, id),
        "--",
        "/bin/sh",
        "-c",
        script,
      ],
      {
        env: { PATH, CUSTOS_ADDR: custos.url, CUSTOS_CACERT: caFile, ...instanceEnv(id, await register(id)) },
        stdio: ["ignore", "pipe", "pipe"],
      },
    );
    started.push(proc);
    const run = follow(proc);
    await waitFor("the app to start", () => lines(ready).length > 0);
    const pidOne = childrenOf(proc.pid ?? 0)[0] ?? 0;
    assert.match(
      readFileSync(`/proc/${pidOne}/cmdline`, "utf8"),
      /custos\.js\0run/,
      "custos run is the namespace's first process",
    );
    const zombies = (): number[] =>
      childrenOf(pidOne).filter((pid) => {
        try {
          return /^\d+ \(.*\) Z /.test(readFileSync(`/proc/${pid}/stat`, "utf8"));
        } catch {
          return false;
        }
      });
    // The helpers end within moments; an init reaps them as they do.
    await waitFor("the helpers to end", () => childrenOf(pidOne).length <= 1 + zombies().length, 10_000);
    await new Promise((r) => setTimeout(r, 1000));
    const left = zombies().length;
    process.kill(pidOne, "SIGTERM");
    assert.equal(await run.exited, 7, run.stderr);
    assert.equal(left, 0, "orphans stayed zombies under custos run");
  });

  test("a token used twice: racing runs start one app, the other exits 1 saying why, writes nothing and starts nothing; a replay into the running one's --dir leaves its files alone", async () => {
    const id = "replay";
    const token = await register(id);
    const tokenSecret = token.split(".").slice(2).join(".");
    assert.ok(tokenSecret.length > 8, "a token is cbt.<id>.<secret>");
    const events = [join(work, `${id}-a-events`), join(work, `${id}-b-events`)];
    const dirs = [join(work, `${id}-a`), join(work, `${id}-b`)];
    const runs = [0, 1].map((i) =>
      launch(["--dir", dirs[i] as string, "--", ...noting(events[i] as string)], instanceEnv(id, token)),
    );
    await waitFor("one of the two to give up", () => runs.some((r) => r.proc.exitCode !== null));
    const loser = runs.findIndex((r) => r.proc.exitCode !== null);
    const winner = 1 - loser;
    const lost = runs[loser] as Running;
    const won = runs[winner] as Running;
    await waitFor("the winner's app to start", () => lines(events[winner] as string).length > 0);
    assert.equal(lost.proc.exitCode, 1, lost.stderr);
    assert.equal(lost.stderr, "error: unauthenticated: invalid bootstrap token\n", "one clear line");
    assert.equal(lost.stdout, "");
    assert.deepEqual(lines(events[loser] as string), [], "the refused run started its app");
    for (const f of ["key.pem", "jwt", "cert.pem", "ca.pem"]) {
      assert.ok(!existsSync(join(dirs[loser] as string, f)), `the refused run wrote ${f}`);
    }

    // The same token again, into the running instance's directory.
    const dir = dirs[winner] as string;
    const before = ["key.pem", "cert.pem", "ca.pem", "jwt"].map((f) => readFileSync(join(dir, f), "utf8"));
    const marker = join(work, `${id}-c-ran`);
    const again = launch(
      ["--dir", dir, "--", process.execPath, "-e", `require("node:fs").writeFileSync(${JSON.stringify(marker)}, "")`],
      instanceEnv(id, token),
    );
    assert.equal(await again.exited, 1, again.stderr);
    assert.match(again.stderr, /^error: unauthenticated: invalid bootstrap token$/m);
    assert.ok(!existsSync(marker), "the replayed run started its app");
    assert.deepEqual(
      ["key.pem", "cert.pem", "ca.pem", "jwt"].map((f) => readFileSync(join(dir, f), "utf8")),
      before,
      "a refused run changed the running instance's files",
    );
    for (const r of [lost, again, won]) assert.ok(!r.stderr.includes(tokenSecret), "a log holds the token");

    // The server saw both replays and recorded them without the token.
    const denied = custos.query<{ details: string }>(
      "SELECT details FROM audit_log WHERE action = 'broker.exchange' AND outcome = 'denied' AND resource LIKE ?",
      `%/${id}`,
    );
    assert.equal(denied.length, 2, JSON.stringify(denied));
    for (const d of denied) {
      assert.match(d.details, /replay/);
      assert.ok(!d.details.includes(tokenSecret));
    }
    assert.ok(alive(startedPid(events[winner] as string)), "the running app was disturbed");
    won.proc.kill("SIGTERM");
    assert.equal(await won.exited, 143, won.stderr);
  });

  test("the files hold what the server issued (openssl, the database, /v1/pki/chain.pem, introspection), keep their modes under umask 000, and a JWT refresh rewrites the jwt file and a {{ jwt }} template whole without disturbing the app", async () => {
    const id = "files";
    const dir = join(work, "fresh", "nested", id);
    const out = join(work, `${id}-out`);
    mkdirSync(out);
    const template = join(work, `${id}.tmpl`);
    const dest = join(out, "token.conf");
    writeFileSync(template, "token={{ jwt }}\n");
    const events = join(work, `${id}-events`);
    // The app re-reads the jwt file and the template every few ms, noting anything not whole.
    const reader = `
      const jwtFile = process.env.CUSTOS_JWT_FILE;
      const JWT = /^[A-Za-z0-9_-]+\\.[A-Za-z0-9_-]+\\.[A-Za-z0-9_-]+$/;
      let first;
      process.on("SIGHUP", () => note("hup"));
      setInterval(() => {
        try {
          const jwt = fs.readFileSync(jwtFile, "utf8");
          const conf = fs.readFileSync(${JSON.stringify(dest)}, "utf8");
          if (!JWT.test(jwt)) note("partial jwt " + jwt.length);
          if (!/^token=[A-Za-z0-9_.-]+\\n$/.test(conf)) note("partial template " + conf.length);
          if (first === undefined) first = jwt;
          else if (jwt !== first && !seen) { seen = true; note("refreshed"); }
        } catch (e) { note("error " + e.code); }
      }, 3);
      let seen = false;`;
    const run = launch(
      ["--dir", dir, "--poll", "1h", "--template", `${template}:${dest}`, "--", ...noting(events, reader)],
      instanceEnv(id, await register(id)),
      { umask: "000" },
    );
    try {
      await waitFor("the app to start", () => lines(events).length > 0);
      const appPid = startedPid(events);
      const files = {
        cert: join(dir, "cert.pem"),
        key: join(dir, "key.pem"),
        ca: join(dir, "ca.pem"),
        jwt: join(dir, "jwt"),
      };

      // Modes: whatever the umask, the private files are 0600, the created directories 0700.
      const mode = (f: string) => statSync(f).mode & 0o777;
      assert.equal(mode(dir), 0o700);
      assert.equal(mode(dirname(dir)), 0o700, "a parent custos run created");
      assert.equal(mode(files.key), 0o600);
      assert.equal(mode(files.jwt), 0o600);
      assert.equal(mode(dest), 0o600);
      assert.equal(mode(files.cert) & 0o022, 0, "cert.pem writable by others");

      // The app was pointed at exactly these files (its environment by the kernel's account).
      const env = environOf(appPid);
      assert.equal(env.get("CUSTOS_CERT_FILE"), files.cert);
      assert.equal(env.get("CUSTOS_KEY_FILE"), files.key);
      assert.equal(env.get("CUSTOS_CA_FILE"), files.ca);
      assert.equal(env.get("CUSTOS_JWT_FILE"), files.jwt);
      const spiffeId = `spiffe://custos/org/acme/space/prod/app/web/instance/${id}`;
      assert.equal(env.get("CUSTOS_SPIFFE_ID"), spiffeId);

      // ca.pem is the server's published chain; cert.pem the leaf then the intermediate.
      const chain = await custos.call("GET", "/v1/pki/chain.pem", undefined, null);
      assert.equal(chain.status, 200);
      assert.deepEqual(pemBlocks(readFileSync(files.ca, "utf8")), pemBlocks(chain.text));
      const [leafPem, ...rest] = pemBlocks(readFileSync(files.cert, "utf8"));
      assert.deepEqual(rest, pemBlocks(chain.text).slice(0, 1), "cert.pem: the leaf, then the intermediate");
      const verify = openssl([
        "verify",
        "-purpose",
        "sslclient",
        "-CAfile",
        files.ca,
        "-untrusted",
        files.cert,
        files.cert,
      ]);
      assert.equal(verify.status, 0, verify.out);
      const san = openssl(["x509", "-in", files.cert, "-noout", "-ext", "subjectAltName"]);
      assert.match(san.out, new RegExp(`URI:${spiffeId.replaceAll(".", "\\.")}`));
      assert.match(san.out, /DNS:files\.custos\b/);

      // The leaf is the one the server recorded for this instance, under the reserved role.
      const rows = custos.query<{ pem: string; role: string; status: string }>(
        "SELECT c.pem, c.role, c.status FROM pki_certificates c JOIN broker_certificates b USING (serial) WHERE b.instance_id = ?",
        id,
      );
      assert.equal(rows.length, 1);
      assert.deepEqual(pemBlocks(rows[0]?.pem ?? ""), [leafPem]);
      assert.equal(rows[0]?.role, "custos-identity");
      assert.equal(rows[0]?.status, "valid");
      const leaf = new X509Certificate(leafPem ?? "");
      assert.ok(leaf.checkPrivateKey(createPrivateKey(readFileSync(files.key, "utf8"))), "key.pem is the leaf's key");

      // The JWT is live at the server and names the instance.
      const jwt = readFileSync(files.jwt, "utf8");
      assert.equal(readFileSync(dest, "utf8"), `token=${jwt}\n`);
      const seen = await api("POST", "/v1/broker/introspect", { token: jwt }, null);
      assert.equal(seen.active, true);
      const claims = seen.claims as Json;
      assert.equal(claims.sub, spiffeId);
      assert.equal(claims.instance, id);
      assert.equal(Number(claims.exp) - Number(claims.iat), 30);

      // The refresh at half its life: both files replaced whole, the app not signalled.
      await waitFor("the JWT's refresh", () => lines(events).includes("refreshed"), 40_000);
      await waitFor(
        "the template's rewrite",
        () => readFileSync(dest, "utf8") === `token=${readFileSync(files.jwt, "utf8")}\n`,
      );
      const fresh = readFileSync(files.jwt, "utf8");
      assert.notEqual(fresh, jwt);
      assert.equal((await api("POST", "/v1/broker/introspect", { token: fresh }, null)).active, true);
      assert.deepEqual(
        lines(events).filter((l) => !l.startsWith("start ") && l !== "refreshed"),
        [],
        "the app read a partial file or was signalled for a JWT refresh",
      );
      assert.equal(mode(files.jwt), 0o600);
      assert.equal(mode(dest), 0o600);
      assert.ok(!run.stderr.includes(jwt) && !run.stderr.includes(fresh), "the log holds a JWT");
    } finally {
      run.proc.kill("SIGTERM");
      await run.exited;
    }
    assert.ok(!existsSync(join(dir, "key.pem")) && !existsSync(join(dir, "jwt")), "the private files outlived the run");
  });

  test("secrets stay out of custos run's output, argv and environment, and out of an app's environment --no-env keeps them from; a rotation is named, never shown", async () => {
    const id = "hidden";
    const tokenFile = join(work, `${id}-token`);
    writeFileSync(tokenFile, `${await register(id)}\n`, { mode: 0o600 });
    const token = readFileSync(tokenFile, "utf8").trim();
    const events = join(work, `${id}-events`);
    const app = noting(events, 'process.on("SIGHUP", () => note("hup")); process.stdout.write("ready\\n");');
    const run = launch(
      [
        "--token-file",
        tokenFile,
        "--dir",
        join(work, id),
        "--poll",
        "1",
        "--no-env",
        "--env",
        "ONLY_KEY=api-key",
        "--",
        ...app,
      ],
      { CUSTOS_INSTANCE_ID: id },
    );
    try {
      await waitFor("the app to start", () => lines(events).length > 0);
      const appPid = startedPid(events);
      const supervisor = run.proc.pid ?? 0;
      assert.deepEqual(childrenOf(supervisor), [appPid], "the app is custos run's child");

      const appEnv = environOf(appPid);
      assert.equal(appEnv.get("ONLY_KEY"), API_KEY, "the one secret mapped");
      const appEnvText = [...appEnv.values()].join("\n");
      for (const value of [DB_PASSWORD, BUNDLE, token]) {
        assert.ok(!appEnvText.includes(value), "--no-env let a secret (or the token) into the app's environment");
      }
      const own = `${readFileSync(`/proc/${supervisor}/cmdline`, "utf8")}\n${readFileSync(`/proc/${supervisor}/environ`, "utf8")}`;
      for (const value of [DB_PASSWORD, API_KEY, BUNDLE, token]) {
        assert.ok(!own.includes(value), "custos run's own argv or environment holds a secret");
      }
      assert.ok(!readFileSync(`/proc/${appPid}/cmdline`, "utf8").includes(token));

      await api("PUT", "/v1/secrets/data/acme/prod/web/db/password", { value: ROTATED });
      await waitFor("the rotation's SIGHUP", () => lines(events).includes("hup"));
      // custos run names the change after the signal has gone, so the line may come after the app's note.
      await waitFor("the rotation's log line", () =>
        /custos run: secrets changed \(db\/password\): sent SIGHUP to the app/.test(run.stderr),
      );
      // Polls that find nothing new signal nothing.
      await new Promise((r) => setTimeout(r, 2500));
      assert.deepEqual(lines(events).slice(1), ["hup"], "one change, one signal");
      const jwt = readFileSync(join(work, id, "jwt"), "utf8");
      for (const value of [DB_PASSWORD, ROTATED, API_KEY, BUNDLE, token, jwt]) {
        assert.ok(!run.stderr.includes(value), "custos run's log holds a credential");
      }
      assert.equal(run.stdout, "ready\n");
    } finally {
      run.proc.kill("SIGTERM");
      await run.exited;
      await api("PUT", "/v1/secrets/data/acme/prod/web/db/password", { value: DB_PASSWORD });
    }
  });

  test("a template naming a secret the instance doesn't get (another app's, by its whole path) stops the start: exit 1, named, no app, no private file, no output file", async () => {
    const id = "tmpl-foreign";
    const template = join(work, `${id}.tmpl`);
    writeFileSync(template, 'mine={{ secret "db/password" }}\n\ntheirs={{ secret "acme/prod/api/queue/token" }}\n');
    const dest = join(work, `${id}.conf`);
    const marker = join(work, `${id}-ran`);
    const dir = join(work, id);
    const run = launch(
      [
        "--dir",
        dir,
        "--template",
        `${template}:${dest}`,
        "--",
        process.execPath,
        "-e",
        `require("node:fs").writeFileSync(${JSON.stringify(marker)}, "")`,
      ],
      instanceEnv(id, await register(id)),
    );
    assert.equal(await run.exited, 1, run.stderr);
    assert.match(
      run.stderr,
      /^error: missing_secret: .*\.tmpl:3:8: secret "acme\/prod\/api\/queue\/token" is not one this instance receives$/m,
    );
    assert.ok(!existsSync(marker), "the app started");
    assert.ok(!existsSync(dest), "the template was written");
    assert.ok(!existsSync(join(dir, "key.pem")) && !existsSync(join(dir, "jwt")), "private files left behind");
    for (const value of [OTHER_APP_SECRET, DB_PASSWORD]) assert.ok(!run.stderr.includes(value));
  });

  test("a secret deleted on the server: --on-change restart starts the app with the version left, then without it; a template keeps its last value and says so; a value no environment can hold restarts nothing", async () => {
    const restartEvents = join(work, "rot-restart-events");
    const signalEvents = join(work, "rot-signal-events");
    const template = join(work, "rot.tmpl");
    const dest = join(work, "rot.conf");
    writeFileSync(template, 'level={{ secret "level" }}\n');
    const restartApp = [
      process.execPath,
      "-e",
      `const fs = require("node:fs"); const level = process.env.LEVEL ?? "(none)";
       fs.appendFileSync(${JSON.stringify(restartEvents)}, level + "\\n");
       process.on("SIGTERM", () => { fs.appendFileSync(${JSON.stringify(restartEvents)}, "term " + level + "\\n"); process.exit(0); });
       setInterval(() => {}, 1000);`,
    ];
    const restart = launch(
      ["--dir", join(work, "rot-restart"), "--poll", "1", "--on-change", "restart", "--", ...restartApp],
      instanceEnv("rot-restart", await register("rot-restart", "rot")),
    );
    const signalled = launch(
      [
        "--dir",
        join(work, "rot-signal"),
        "--poll",
        "1",
        "--template",
        `${template}:${dest}`,
        "--",
        ...noting(signalEvents, 'process.on("SIGHUP", () => note("hup"));'),
      ],
      instanceEnv("rot-signal", await register("rot-signal", "rot")),
    );
    try {
      await waitFor("both apps to start", () => lines(restartEvents).length === 1 && lines(signalEvents).length === 1);
      assert.deepEqual(lines(restartEvents), [LEVEL_2]);
      assert.equal(readFileSync(dest, "utf8"), `level=${LEVEL_2}\n`);

      // The newest version deleted: an instance gets the newest live one, version 1.
      await api("POST", "/v1/secrets/delete/acme/prod/rot/level", { versions: [2] });
      await waitFor("the restart onto version 1", () => lines(restartEvents).length === 3);
      assert.deepEqual(
        lines(restartEvents),
        [LEVEL_2, `term ${LEVEL_2}`, LEVEL_1],
        "stopped with SIGTERM, started anew",
      );
      await waitFor("the template's rewrite", () => readFileSync(dest, "utf8") === `level=${LEVEL_1}\n`);

      // No live version left: the restarted app has no LEVEL; the template stays, with a warning.
      await api("POST", "/v1/secrets/delete/acme/prod/rot/level", { versions: [1] });
      await waitFor("the restart without it", () => lines(restartEvents).length === 5);
      assert.deepEqual(lines(restartEvents), [LEVEL_2, `term ${LEVEL_2}`, LEVEL_1, `term ${LEVEL_1}`, "(none)"]);
      await waitFor("the template's warning", () =>
        /warning: .*secret "level" is not one this instance receives; .*rot\.conf left as it was/.test(
          signalled.stderr,
        ),
      );
      assert.equal(readFileSync(dest, "utf8"), `level=${LEVEL_1}\n`);

      // A value no environment can hold: no restart, a warning naming it; the next good value restarts.
      await api("PUT", "/v1/secrets/data/acme/prod/rot/level", { value: `${NUL_LEVEL}\u0000tail` });
      await waitFor("the refusal to restart", () => /not restarting the app/.test(restart.stderr));
      // Its own line, written after the refusal's: it may not have arrived with it.
      await waitFor("the warning naming the value's fault", () =>
        /warning: secret level can't go into LEVEL: its value holds a NUL byte/.test(restart.stderr),
      );
      await api("PUT", "/v1/secrets/data/acme/prod/rot/level", { value: LEVEL_1 });
      await waitFor("the restart onto a usable value", () => lines(restartEvents).length === 7);
      assert.deepEqual(lines(restartEvents).slice(5), ["term (none)", LEVEL_1]);
      assert.equal(restart.proc.exitCode, null);
      assert.equal(signalled.proc.exitCode, null);
      for (const r of [restart, signalled]) {
        for (const value of [LEVEL_1, LEVEL_2, NUL_LEVEL]) assert.ok(!r.stderr.includes(value), "a log holds a secret");
      }
    } finally {
      restart.proc.kill("SIGTERM");
      signalled.proc.kill("SIGTERM");
      assert.equal(await restart.exited, 0, restart.stderr);
      await signalled.exited;
    }
    // custos run's SIGTERM reached the app as it was after the restarts.
    assert.equal(lines(restartEvents).at(-1), `term ${LEVEL_1}`);
  });

  test("a Custos that hangs (accepts, never answers) doesn't touch the app, and doesn't hold up custos run's exit once the app ends", async () => {
    const relay = new Relay(custos.port);
    await relay.start();
    const id = "hung";
    const events = join(work, `${id}-events`);
    const dir = join(work, id);
    const app = noting(
      events,
      'process.on("SIGHUP", () => note("hup")); process.on("SIGTERM", () => process.exit(0));',
    );
    const run = launch(["--dir", dir, "--poll", "1", "--on-change", "restart", "--", ...app], {
      ...instanceEnv(id, await register(id)),
      CUSTOS_ADDR: `https://127.0.0.1:${relay.port}`,
    });
    try {
      await waitFor("the app to start", () => lines(events).length > 0);
      const appPid = startedPid(events);
      // Let a poll or two through the relay, then hang it (keep-alive connections cut).
      await new Promise((r) => setTimeout(r, 2500));
      relay.hang();
      await new Promise((r) => setTimeout(r, 3000));
      assert.equal(run.proc.exitCode, null, run.stderr);
      assert.ok(alive(appPid), "the app died while Custos hung");
      assert.deepEqual(lines(events).slice(1), [], "the app was signalled or restarted while Custos hung");
      assert.equal(lines(events).length, 1, "the app was started again");

      // The app ends; custos run must not sit out the hung call's 30 s timeout and retries.
      run.proc.kill("SIGTERM");
      await waitFor("custos run to end", () => run.proc.exitCode !== null, 15_000);
      assert.equal(run.proc.exitCode, 0, run.stderr);
      assert.ok(!existsSync(join(dir, "key.pem")) && !existsSync(join(dir, "jwt")));
    } finally {
      if (run.proc.exitCode === null) run.proc.kill("SIGKILL");
      await relay.close();
    }
  });

  test("custos run whose stderr reader has gone keeps supervising: a log line it can't write ends neither it nor its hold on the app", async () => {
    const id = "noisy-1";
    const events = join(work, `${id}-events`);
    const dir = join(work, id);
    const app = noting(
      events,
      'process.on("SIGHUP", () => note("hup")); process.on("SIGTERM", () => { note("term"); process.exit(5); });',
    );
    const run = launch(["--dir", dir, "--poll", "1", "--", ...app], instanceEnv(id, await register(id, "noisy")));
    try {
      await waitFor("the app to start", () => lines(events).length > 0);
      const appPid = startedPid(events);
      strays.push(appPid);
      // The log's reader goes away (a log shipper restarting, `| head`): custos run's next line has nowhere to go.
      run.proc.stderr?.destroy();
      await api("PUT", "/v1/secrets/data/acme/prod/noisy/value", { value: `${NOISY}-2` });
      await waitFor("the change's SIGHUP", () => lines(events).includes("hup"));
      await new Promise((r) => setTimeout(r, 2000));
      assert.equal(run.proc.exitCode, null, "custos run ended when it could not write a log line");
      run.proc.kill("SIGTERM");
      assert.equal(await run.exited, 5, "the app's exit code");
      assert.ok(lines(events).includes("term"), "the SIGTERM was not passed on");
      assert.ok(!alive(appPid), "the app was left running without its supervisor");
      assert.ok(!existsSync(join(dir, "key.pem")) && !existsSync(join(dir, "jwt")), "the private files were left");
    } finally {
      if (run.proc.exitCode === null) run.proc.kill("SIGKILL");
    }
  });

  test("bad invocations: exit 64 with an error naming what is wrong on stderr, nothing on stdout, no app, and the token left unspent", async () => {
    const id = "usage";
    const token = await register(id);
    const marker = join(work, `${id}-ran`);
    const touch = ["--", process.execPath, "-e", `require("node:fs").writeFileSync(${JSON.stringify(marker)}, "")`];
    const dir = ["--dir", join(work, id)];
    const template = join(work, `${id}.tmpl`);
    writeFileSync(template, 'x={{ secret "db/password" }}\n');
    const badTemplate = join(work, `${id}-bad.tmpl`);
    writeFileSync(badTemplate, "x={{ secret db/password }}\n");
    const empty = join(work, `${id}-empty-token`);
    writeFileSync(empty, "\n");
    const env = instanceEnv(id, token);
    const noToken = { CUSTOS_INSTANCE_ID: id };
    const noInstance = { CUSTOS_BOOTSTRAP_TOKEN: token };
    const cases: Array<{ args: string[]; env?: Record<string, string>; says: RegExp }> = [
      { args: [...dir], says: /missing required argument 'command'/ },
      { args: [...dir, "--poll", "0", ...touch], says: /--poll/ },
      { args: [...dir, "--poll", "86401", ...touch], says: /--poll/ },
      { args: [...dir, "--poll", "2d", ...touch], says: /--poll/ },
      { args: [...dir, "--poll", "1.5", ...touch], says: /--poll/ },
      { args: [...dir, "--poll", "soon", ...touch], says: /--poll/ },
      { args: [...dir, "--signal", "KILL", ...touch], says: /invalid signal "KILL"/ },
      { args: [...dir, "--signal", "SIGSTOP", ...touch], says: /invalid signal/ },
      { args: [...dir, "--on-change", "reload", ...touch], says: /--on-change/ },
      { args: [...dir, "--key-type", "rsa-512", ...touch], says: /--key-type/ },
      { args: [...dir, "--template", "no-colon", ...touch], says: /invalid --template "no-colon"/ },
      { args: [...dir, "--template", `:${join(work, "x")}`, ...touch], says: /invalid --template/ },
      { args: [...dir, "--template", `${template}:`, ...touch], says: /invalid --template/ },
      {
        args: [...dir, "--template", `${join(work, "missing.tmpl")}:${join(work, "x.conf")}`, ...touch],
        says: /cannot read template/,
      },
      { args: [...dir, "--template", `${badTemplate}:${join(work, "x.conf")}`, ...touch], says: /unknown placeholder/ },
      {
        args: [
          ...dir,
          "--template",
          `${template}:${join(work, "same.conf")}`,
          "--template",
          `${template}:${join(work, "same.conf")}`,
          ...touch,
        ],
        says: /two templates write/,
      },
      { args: [...dir, "--env", "1BAD=db/password", ...touch], says: /invalid --env/ },
      { args: [...dir, "--env", "NOEQUALS", ...touch], says: /invalid --env/ },
      { args: [...dir, "--env", "EMPTY=", ...touch], says: /the secret name is empty/ },
      { args: [...dir, "--env", "CUSTOS_KEY_FILE=db/password", ...touch], says: /set by custos run itself/ },
      { args: [...dir, "--env", "A=db/password", "--env", "A=api-key", ...touch], says: /--env A given twice/ },
      { args: [...dir, "--frobnicate", ...touch], says: /unknown option '--frobnicate'/ },
      { args: [...dir, ...touch], env: noToken, says: /no bootstrap token/ },
      { args: [...dir, ...touch], env: noInstance, says: /no instance id/ },
      {
        args: [...dir, "--token-file", join(work, "no-such-token"), ...touch],
        env: noToken,
        says: /cannot read --token-file/,
      },
      { args: [...dir, "--token-file", empty, ...touch], env: noToken, says: /is empty/ },
      { args: [...dir, ...touch], env: { ...env, CUSTOS_ADDR: "http://127.0.0.1:1" }, says: /https/ },
    ];
    const results = await Promise.all(
      cases.map(async (c) => {
        const run = launch(c.args, c.env ?? env);
        return { c, run, code: await run.exited };
      }),
    );
    for (const { c, run, code } of results) {
      const what = `custos run ${c.args.join(" ")}`;
      assert.equal(code, 64, `${what}: exited ${code}:\n${run.stderr}`);
      assert.match(run.stderr, /^error: /, what);
      assert.match(run.stderr, c.says, `${what}:\n${run.stderr}`);
      assert.equal(run.stdout, "", what);
      assert.ok(!run.stderr.includes(token.split(".").slice(2).join(".")), `${what}: the token is echoed`);
    }
    assert.ok(!existsSync(marker), "an app started on a bad invocation");
    assert.equal(tokenState(id), "unused", "a bad invocation spent the token");

    // The help says what these runs did; the token then works.
    const help = launch(["--help"], {});
    assert.equal(await help.exited, 0);
    assert.match(help.stdout.replace(/\s+/g, " "), /64 usage/);
    assert.match(help.stdout.replace(/\s+/g, " "), /127 command not found/);
    const good = launch([...dir, ...touch], env);
    assert.equal(await good.exited, 0, good.stderr);
    assert.ok(existsSync(marker));
  });

  test("a --dir that can't be a directory is refused before the exchange: the token stays unspent", async () => {
    const id = "dir-file";
    const token = await register(id);
    const notDir = join(work, `${id}-file`);
    writeFileSync(notDir, "a file\n");
    const run = launch(["--dir", notDir, "--", "true"], instanceEnv(id, token));
    const code = await run.exited;
    assert.ok(code === 1 || code === 64, `exited ${code}:\n${run.stderr}`);
    assert.match(run.stderr, /^error: .*dir-file-file/m);
    assert.equal(tokenState(id), "unused");
  });

  test("a command that isn't there exits 127 before the exchange: the token stays unspent for the fixed command", async () => {
    const id = "no-command";
    const token = await register(id);
    const dir = join(work, id);
    const missing = launch(["--dir", dir, "--", "no-such-command-here"], instanceEnv(id, token));
    assert.equal(await missing.exited, 127, missing.stderr);
    assert.match(missing.stderr, /no-such-command-here/);
    assert.equal(tokenState(id), "unused", "the token was spent on a command that could not start");
    const fixed = launch(["--dir", dir, "--", "true"], instanceEnv(id, token));
    assert.equal(await fixed.exited, 0, fixed.stderr);
  });

  test("a secret named node/options doesn't become NODE_OPTIONS unasked: its writer must not choose what a node app loads", async () => {
    const evil = join(work, "evil.cjs");
    const marker = join(work, "evil-ran");
    writeFileSync(evil, `require("node:fs").writeFileSync(${JSON.stringify(marker)}, "")\n`);
    await api("PUT", "/v1/secrets/data/acme/prod/nodeapp/node/options", { value: `--require=${evil}` });
    const id = "nodeapp-1";
    const run = launch(
      ["--dir", join(work, id), "--", process.execPath, "-e", "process.stdout.write('app ran')"],
      instanceEnv(id, await register(id, "nodeapp")),
    );
    const code = await run.exited;
    assert.ok(!existsSync(marker), "code the secret's writer chose ran inside the app");
    assert.equal(code, 64, run.stderr);
    assert.match(run.stderr, /env_conflict: secret node\/options would .*NODE_OPTIONS/);
  });

  test("the plain app: no secrets at all still starts, with the credential variables and nothing else added", async () => {
    const id = "plain-1";
    const base = { PATH, CUSTOS_ADDR: custos.url, CUSTOS_CACERT: caFile, PLATFORM_SETTING: "kept" };
    const app = [process.execPath, "-e", "process.stdout.write(JSON.stringify(process.env))"];
    const run = launch(
      ["--dir", join(work, id), "--", ...app],
      { ...base, ...instanceEnv(id, await register(id, "plain")) },
      { bareEnv: true },
    );
    assert.equal(await run.exited, 0, run.stderr);
    const seen = JSON.parse(run.stdout) as Record<string, string>;
    const dir = join(work, id);
    assert.deepEqual(seen, {
      ...base,
      CUSTOS_INSTANCE_ID: id,
      CUSTOS_CERT_FILE: join(dir, "cert.pem"),
      CUSTOS_KEY_FILE: join(dir, "key.pem"),
      CUSTOS_CA_FILE: join(dir, "ca.pem"),
      CUSTOS_JWT_FILE: join(dir, "jwt"),
      CUSTOS_SPIFFE_ID: `spiffe://custos/org/acme/space/prod/app/plain/instance/${id}`,
    });
  });
});
