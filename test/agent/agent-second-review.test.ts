/**
 * Second conformance review of `custos run` (issue 5: each container proves once
 * who it is, then holds an identity certificate, a short-lived JWT and exactly its
 * app's secrets, fetched at startup, renewed while it runs). Oracles: a real Custos,
 * what the app process itself sees (its environment, its files, /proc), openssl on
 * the files written, jose against the JWK set, file modes and directory listings.
 * What test/e2e/run.test.ts, test/run/*.test.ts and test/broker/*.test.ts check is
 * not repeated.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { createPrivateKey, X509Certificate } from "node:crypto";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { after, before, describe, test } from "node:test";
import { createServer as createTlsServer, type TLSSocket } from "node:tls";
import { createLocalJWKSet, type JSONWebKeySet, jwtVerify } from "jose";
import { type CustosInstance, httpsJson, startCustos } from "../helpers/custos.js";
import { freePort } from "../helpers/ports.js";
import { follow, type Running } from "../helpers/process.js";
import { alive, waitFor } from "../helpers/wait.js";

type Json = Record<string, unknown>;

const BIN = join(resolve(import.meta.dirname, "../.."), "bin/custos.js");
const DB_PASSWORD = "agent-review-db-password";
/** A value that looks like template syntax: rendering must insert it as it is. */
const TRICKY = 'a{{ jwt }}b}}c{{ "x" }}';

function openssl(args: string[]): { status: number; out: string } {
  const r = spawnSync("openssl", args, { encoding: "utf8" });
  return { status: r.status ?? -1, out: `${r.stdout}${r.stderr}` };
}

const pemBlocks = (text: string): string[] =>
  text.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----\n?/g) ?? [];

describe("custos run: second review", () => {
  let custos: CustosInstance;
  let work: string;
  let caFile: string;
  let agent: string;

  const api = async (method: string, path: string, body?: unknown, bearer?: string | null): Promise<Json> => {
    const r = await custos.call(method, path, body, bearer);
    assert.ok(r.status >= 200 && r.status < 300, `${method} ${path}: ${r.status} ${r.text}`);
    return r.body as Json;
  };

  /** The platform agent registers an instance of acme/prod/<app>; its bootstrap token. */
  const register = async (instance: string, app = "web"): Promise<string> => {
    const body = { org: "acme", space: "prod", app, instance };
    return String((await api("POST", "/v1/broker/instances", body, agent)).bootstrapToken);
  };

  /** `custos run` as a container entry point starts it; `env` is added last. */
  const launch = (args: string[], env: Record<string, string>): Running => {
    const proc = spawn(process.execPath, [BIN, "run", ...args], {
      env: {
        PATH: `${dirname(process.execPath)}:/usr/bin:/bin`,
        CUSTOS_ADDR: custos.url,
        CUSTOS_CACERT: caFile,
        ...env,
      },
      stdio: ["ignore", "pipe", "pipe"],
    });
    return follow(proc);
  };

  /** An app that appends what happens to it to `events` ("start <pid>" first), and idles. */
  const noting = (events: string, extra = ""): string => `
    const fs = require("node:fs");
    const note = (t) => fs.appendFileSync(${JSON.stringify(events)}, t + "\\n");
    ${extra}
    note("start " + process.pid);
    setInterval(() => {}, 1000);`;
  /** An app that copies the credentials directory to `copy` and ends: the private files leave with the run. */
  const copying = (dir: string, copy: string): string[] => [
    process.execPath,
    "-e",
    `require("node:fs").cpSync(${JSON.stringify(dir)}, ${JSON.stringify(copy)}, { recursive: true })`,
  ];
  const lines = (file: string): string[] => (existsSync(file) ? readFileSync(file, "utf8").trim().split("\n") : []);
  const appPid = (events: string): number =>
    Number(
      lines(events)
        .find((l) => l.startsWith("start "))
        ?.split(" ")[1],
    );

  before(async () => {
    // The shortest identity life Custos allows, so a renewal happens while a test watches. The JWT lives
    // longer: the first one must still be valid when the renewal test checks it, after the renewal.
    custos = await startCustos({ broker: { identityTtlSeconds: 60, jwtTtlSeconds: 120 } });
    work = mkdtempSync(join(tmpdir(), "custos-run-review-"));
    caFile = join(work, "custos-ca.pem");
    writeFileSync(caFile, custos.ca);
    agent = String((await api("POST", "/v1/auth/tokens", { name: "node-agent", policies: ["platform-agent"] })).token);
    await api("POST", "/v1/platform/orgs", { name: "acme" });
    await api("POST", "/v1/platform/orgs/acme/spaces", { name: "prod" });
    await api("POST", "/v1/platform/orgs/acme/spaces/prod/apps", { name: "web" });
    await api("POST", "/v1/platform/orgs/acme/spaces/prod/apps", { name: "tools" });
    await api("PUT", "/v1/secrets/data/acme/prod/web/db/password", { value: DB_PASSWORD });
    await api("PUT", "/v1/secrets/data/acme/prod/web/tricky", { value: TRICKY });
  });

  after(async () => {
    await custos?.dispose();
    if (work) rmSync(work, { recursive: true, force: true });
  });

  test("--key-type ed25519: openssl finds an Ed25519 key.pem matching cert.pem, which verifies to ca.pem as an sslclient", async () => {
    const token = await register("web-ed");
    const dir = join(work, "web-ed");
    const copy = join(work, "web-ed-copy");
    const run = launch(["--dir", dir, "--key-type", "ed25519", "--", ...copying(dir, copy)], {
      CUSTOS_BOOTSTRAP_TOKEN: token,
      CUSTOS_INSTANCE_ID: "web-ed",
    });
    assert.equal(await run.exited, 0, run.stderr);
    const [cert, key, ca] = ["cert.pem", "key.pem", "ca.pem"].map((f) => join(copy, f)) as [string, string, string];
    const text = openssl(["x509", "-in", cert, "-noout", "-text"]);
    assert.equal(text.status, 0, text.out);
    assert.match(text.out, /Public Key Algorithm: ED25519/);
    assert.match(text.out, /URI:spiffe:\/\/custos\/org\/acme\/space\/prod\/app\/web\/instance\/web-ed/);
    const fromCert = openssl(["x509", "-in", cert, "-noout", "-pubkey"]);
    const fromKey = openssl(["pkey", "-in", key, "-pubout"]);
    assert.equal(fromKey.status, 0, fromKey.out);
    assert.equal(fromCert.out, fromKey.out, "key.pem is not the certificate's key");
    // cert.pem carries leaf then intermediate: the intermediate goes in as untrusted, ca.pem is the trust.
    const verify = openssl([
      "verify",
      "-x509_strict",
      "-purpose",
      "sslclient",
      "-CAfile",
      ca,
      "-untrusted",
      cert,
      cert,
    ]);
    assert.equal(verify.status, 0, verify.out);
    assert.equal(statSync(key).mode & 0o777, 0o600);
  });

  test("two instances' files make mutual TLS: openssl s_client with one pair verifies the other's server name, the server its SPIFFE id", async () => {
    const dirs: Record<string, string> = {};
    for (const id of ["web-srv", "web-cli"]) {
      dirs[id] = join(work, `${id}-copy`);
      const run = launch(["--dir", join(work, id), "--", ...copying(join(work, id), dirs[id])], {
        CUSTOS_BOOTSTRAP_TOKEN: await register(id),
        CUSTOS_INSTANCE_ID: id,
      });
      assert.equal(await run.exited, 0, run.stderr);
    }
    const file = (id: string, name: string): string => join(dirs[id] ?? "", name);
    const peers: string[] = [];
    const server = createTlsServer({
      key: readFileSync(file("web-srv", "key.pem")),
      cert: readFileSync(file("web-srv", "cert.pem")),
      ca: readFileSync(file("web-srv", "ca.pem")),
      requestCert: true,
      rejectUnauthorized: true,
    });
    const sockets = new Set<TLSSocket>();
    server.on("secureConnection", (socket) => {
      sockets.add(socket);
      peers.push(socket.getPeerX509Certificate()?.subjectAltName ?? "");
      socket.end("hello\n");
    });
    await new Promise<void>((ok) => server.listen(0, "127.0.0.1", ok));
    const { port } = server.address() as { port: number };
    try {
      const client = spawn("openssl", [
        ...["s_client", "-connect", `127.0.0.1:${port}`, "-verify_return_error", "-brief", "-ign_eof"],
        ...["-verify_hostname", "web-srv.custos", "-CAfile", file("web-cli", "ca.pem")],
        ...["-cert", file("web-cli", "cert.pem"), "-key", file("web-cli", "key.pem")],
      ]);
      let out = "";
      client.stdout.on("data", (c: Buffer) => {
        out += c.toString();
      });
      client.stderr.on("data", (c: Buffer) => {
        out += c.toString();
      });
      client.stdin.end();
      await new Promise((ok) => client.once("exit", ok));
      // Its exit status says how the server closed (no close_notify from node), not whether it verified.
      assert.match(out, /Verification: OK/);
      assert.match(out, /Verified peername: web-srv\.custos/);
      assert.match(out, /hello/);
      assert.equal(peers.length, 1);
      assert.ok(peers[0]?.includes("URI:spiffe://custos/org/acme/space/prod/app/web/instance/web-cli"), peers[0]);
    } finally {
      for (const socket of sockets) socket.destroy();
      await new Promise((ok) => server.close(ok));
    }
  });

  test("--signal usr2 --poll 1: a shared secret granted while the app runs reaches it, and the app gets SIGUSR2, not SIGHUP", async () => {
    const token = await register("web-usr2");
    const events = join(work, "web-usr2-events");
    const app = noting(events, 'process.on("SIGUSR2", () => note("usr2")); process.on("SIGHUP", () => note("hup"));');
    const run = launch(
      ["--dir", join(work, "web-usr2"), "--poll", "1", "--signal", "usr2", "--", process.execPath, "-e", app],
      {
        CUSTOS_BOOTSTRAP_TOKEN: token,
        CUSTOS_INSTANCE_ID: "web-usr2",
      },
    );
    try {
      await waitFor("the app to start", () => lines(events).length > 0);
      await api("PUT", "/v1/secrets/data/shared/late-bundle", { value: "late-bundle-value" });
      await api("PUT", "/v1/secrets/grants/shared/late-bundle", { apps: ["acme/prod/web"] });
      await waitFor("the change's signal", () => lines(events).includes("usr2"));
      // Logged after the signal has gone: the line may come after the app's note.
      await waitFor("the change's log line", () =>
        /secrets changed \(shared\/late-bundle\): sent SIGUSR2 to the app/.test(run.stderr),
      );
      assert.ok(!lines(events).includes("hup"), "the app got SIGHUP");
      assert.ok(!run.stderr.includes("late-bundle-value"));
    } finally {
      // SIGTERM, which custos run passes on: SIGKILL would leave the app running, holding the test's pipes.
      if (run.proc.exitCode === null) run.proc.kill("SIGTERM");
      await run.exited;
    }
  });

  test("forwarded signals: USR1 reaches the app without opening Node's inspector; HUP and INT end it with 129 and 130", async () => {
    const runs = await Promise.all(
      ["web-hup", "web-int"].map(async (id) => {
        const token = await register(id);
        const events = join(work, `${id}-events`);
        const app = noting(events, 'process.on("SIGUSR1", () => note("usr1"));');
        const run = launch(["--dir", join(work, id), "--", process.execPath, "-e", app], {
          CUSTOS_BOOTSTRAP_TOKEN: token,
          CUSTOS_INSTANCE_ID: id,
        });
        await waitFor(`${id} to start`, () => lines(events).length > 0);
        return { id, events, run };
      }),
    );
    try {
      for (const { id, events, run } of runs) {
        run.proc.kill("SIGUSR1");
        await waitFor(`${id}'s SIGUSR1`, () => lines(events).includes("usr1"));
        assert.equal(run.proc.exitCode, null);
        assert.ok(!/Debugger listening/.test(run.stderr), run.stderr);
        // Neither process's command line holds a credential.
        for (const pid of [run.proc.pid ?? 0, appPid(events)]) {
          const argv = readFileSync(`/proc/${pid}/cmdline`, "utf8");
          assert.ok(!argv.includes(DB_PASSWORD) && !argv.includes("cbt."), argv);
        }
      }
      const [hup, int] = runs as [(typeof runs)[0], (typeof runs)[0]];
      hup.run.proc.kill("SIGHUP");
      int.run.proc.kill("SIGINT");
      assert.equal(await hup.run.exited, 129, hup.run.stderr);
      assert.equal(await int.run.exited, 130, int.run.stderr);
    } finally {
      for (const { run } of runs) if (run.proc.exitCode === null) run.proc.kill("SIGTERM");
    }
  });

  test("startup failures start nothing: Custos unreachable exits 2, an invalid token 1 (unechoed), a missing --env secret 1", async () => {
    const marker = join(work, "failures-ran");
    const touch = ["--", process.execPath, "-e", `require("node:fs").writeFileSync(${JSON.stringify(marker)}, "")`];

    const down = launch(["--dir", join(work, "down"), ...touch], {
      CUSTOS_ADDR: `https://127.0.0.1:${await freePort()}`,
      CUSTOS_BOOTSTRAP_TOKEN: await register("web-down"),
      CUSTOS_INSTANCE_ID: "web-down",
    });
    assert.equal(await down.exited, 2, down.stderr);
    assert.match(down.stderr, /unavailable: cannot reach https:\/\/127\.0\.0\.1:\d+/);

    const forged = "cbt.0123456789abcdef.forged-secret-part";
    const invalid = launch(["--dir", join(work, "forged"), ...touch], {
      CUSTOS_BOOTSTRAP_TOKEN: forged,
      CUSTOS_INSTANCE_ID: "web-forged",
    });
    assert.equal(await invalid.exited, 1, invalid.stderr);
    assert.match(invalid.stderr, /unauthenticated: invalid bootstrap token/);
    assert.ok(!invalid.stderr.includes("forged-secret-part"), invalid.stderr);

    const missing = launch(["--dir", join(work, "web-missing"), "--env", "QUEUE=queue/token", ...touch], {
      CUSTOS_BOOTSTRAP_TOKEN: await register("web-missing"),
      CUSTOS_INSTANCE_ID: "web-missing",
    });
    assert.equal(await missing.exited, 1, missing.stderr);
    assert.match(missing.stderr, /--env QUEUE: secret "queue\/token" is not one this instance receives/);
    assert.ok(!missing.stderr.includes(DB_PASSWORD));
    assert.ok(!existsSync(marker), "the app started after a failed start");
  });

  test("a template inserts a secret holding {{ }} as it is; a 0644 file in its place becomes 0600; no temporary file stays", async () => {
    const token = await register("web-tmpl");
    const out = join(work, "tmpl-out");
    mkdirSync(out);
    const template = join(work, "tricky.tmpl");
    const dest = join(out, "app.conf");
    writeFileSync(template, 'v={{ secret "tricky" }}\nopen={{ "{{" }}\n');
    writeFileSync(dest, "old\n", { mode: 0o644 });
    const app = `process.stdout.write(require("node:fs").readFileSync(${JSON.stringify(dest)}, "utf8"))`;
    const run = launch(
      ["--dir", join(work, "web-tmpl"), "--template", `${template}:${dest}`, "--", "node", "-e", app],
      {
        CUSTOS_BOOTSTRAP_TOKEN: token,
        CUSTOS_INSTANCE_ID: "web-tmpl",
      },
    );
    assert.equal(await run.exited, 0, run.stderr);
    const expected = `v=${TRICKY}\nopen={{\n`;
    assert.equal(run.stdout, expected, "what the app read at its start");
    assert.equal(readFileSync(dest, "utf8"), expected);
    assert.equal(statSync(dest).mode & 0o777, 0o600);
    assert.deepEqual(readdirSync(out), ["app.conf"]);
  });

  test("a --template whose destination directory is missing is refused before the exchange spends the token", async () => {
    const token = await register("web-nodir");
    const template = join(work, "plain.tmpl");
    writeFileSync(template, 'p={{ secret "db/password" }}\n');
    const args = ["--dir", join(work, "web-nodir"), "--", process.execPath, "-e", ""];
    const env = { CUSTOS_BOOTSTRAP_TOKEN: token, CUSTOS_INSTANCE_ID: "web-nodir" };
    const dest = join(work, "no-such-dir", "app.conf");
    const bad = launch(["--template", `${template}:${dest}`, ...args], env);
    assert.equal(await bad.exited, 64, bad.stderr);
    assert.ok(bad.stderr.includes(dest), "the message names the destination");
    // Fixed configuration, same token: the instance can still start.
    const good = launch(args, env);
    assert.equal(await good.exited, 0, good.stderr);
  });

  test("an app secret named path doesn't replace PATH unasked, and even mapped doesn't decide which program runs", async () => {
    await api("PUT", "/v1/secrets/data/acme/prod/tools/path", { value: join(work, "empty-bin") });
    const command = ["--", "node", "-e", "process.stdout.write('ran ' + process.env.PATH)"];
    const env = (id: string, token: string) => ({ CUSTOS_BOOTSTRAP_TOKEN: token, CUSTOS_INSTANCE_ID: id });
    const unasked = launch(
      ["--dir", join(work, "tools-1"), ...command],
      env("tools-1", await register("tools-1", "tools")),
    );
    assert.equal(await unasked.exited, 64, unasked.stderr);
    assert.match(
      unasked.stderr,
      /error: env_conflict: secret path would replace PATH, inherited by custos run: .*--env PATH=path/,
    );
    assert.equal(unasked.stdout, "", "the app did not start");

    const mapped = launch(
      ["--dir", join(work, "tools-2"), "--env", "PATH=path", ...command],
      env("tools-2", await register("tools-2", "tools")),
    );
    assert.equal(await mapped.exited, 0, mapped.stderr);
    assert.equal(
      mapped.stdout,
      `ran ${join(work, "empty-bin")}`,
      "custos run's PATH found node; the app got the secret",
    );
  });

  test("renewal (ed25519): the app never reads a partial cert.pem or key.pem, the old certificate and JWT stay valid, the new pair verifies with the same key type", async () => {
    const token = await register("web-renew");
    const dir = join(work, "web-renew");
    const events = join(work, "web-renew-events");
    // The app re-reads both files every 20 ms and notes any read that isn't a whole PEM.
    const reader = `
      const { X509Certificate, createPrivateKey } = require("node:crypto");
      const e = process.env;
      let reads = 0;
      process.on("SIGHUP", () => note("hup"));
      setInterval(() => {
        try {
          const cert = fs.readFileSync(e.CUSTOS_CERT_FILE, "utf8");
          if ((cert.match(/-----END CERTIFICATE-----/g) ?? []).length < 2) throw new Error("cert.pem short");
          new X509Certificate(cert);
          createPrivateKey(fs.readFileSync(e.CUSTOS_KEY_FILE, "utf8"));
          if (++reads === 1) note("reading");
        } catch (err) { note("partial " + err.message); }
      }, 20);`;
    const run = launch(
      ["--dir", dir, "--key-type", "ed25519", "--poll", "3600", "--", process.execPath, "-e", noting(events, reader)],
      {
        CUSTOS_BOOTSTRAP_TOKEN: token,
        CUSTOS_INSTANCE_ID: "web-renew",
      },
    );
    try {
      await waitFor("the app's first read", () => lines(events).includes("reading"));
      const oldPair = {
        cert: readFileSync(join(dir, "cert.pem"), "utf8"),
        key: readFileSync(join(dir, "key.pem"), "utf8"),
      };
      const oldJwt = readFileSync(join(dir, "jwt"), "utf8");
      await waitFor("the renewal's signal", () => lines(events).includes("hup"), 60_000);
      assert.ok(alive(appPid(events)));
      assert.deepEqual(
        lines(events).filter((l) => l.startsWith("partial")),
        [],
        "the app read a partial file",
      );
      const newCert = readFileSync(join(dir, "cert.pem"), "utf8");
      assert.notEqual(newCert, oldPair.cert);
      const leaf = new X509Certificate(pemBlocks(newCert)[0] ?? "");
      assert.equal(leaf.publicKey.asymmetricKeyType, "ed25519", "the renewal kept --key-type");
      assert.ok(leaf.checkPrivateKey(createPrivateKey(readFileSync(join(dir, "key.pem"), "utf8"))));
      const verify = openssl([
        "verify",
        "-CAfile",
        join(dir, "ca.pem"),
        "-untrusted",
        join(dir, "cert.pem"),
        join(dir, "cert.pem"),
      ]);
      assert.equal(verify.status, 0, verify.out);
      assert.deepEqual(readdirSync(dir).sort(), ["ca.pem", "cert.pem", "jwt", "key.pem"]);
      assert.equal(statSync(join(dir, "key.pem")).mode & 0o777, 0o600);

      // Renewal replaces, it doesn't revoke: what the app held a moment ago still works until it expires.
      const who = await httpsJson({
        port: custos.port,
        ca: custos.ca,
        method: "GET",
        path: "/v1/broker/whoami",
        client: oldPair,
      });
      assert.equal(who.status, 200, who.text);
      const jwks = createLocalJWKSet(
        (await api("GET", "/v1/broker/jwks", undefined, null)) as unknown as JSONWebKeySet,
      );
      await jwtVerify(oldJwt, jwks, { audience: "custos" });
      const introspect = await api("POST", "/v1/broker/introspect", { token: oldJwt }, null);
      assert.equal(introspect.active, true);
    } finally {
      if (run.proc.exitCode === null) run.proc.kill("SIGTERM");
      await run.exited;
    }
  });
});
