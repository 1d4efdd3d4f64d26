/**
 * Certificate rotation checked the way an operator of nginx, certbot or
 * `step ca renew --daemon` would check it, against independent oracles: openssl
 * (verify, s_client, x509), a real nginx on a loopback port, strace and the file
 * system (modes, inodes). Covers the agent's files and renewal, its options, and
 * Custos renewing its own listener certificate.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { createHash, X509Certificate } from "node:crypto";
import {
  closeSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { Agent, request } from "node:https";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, before, describe, test } from "node:test";
import { connect } from "node:tls";
import { type AgentLogLevel, CertAgent, type CertAgentOptions, runCertAgent } from "../../src/agent/index.js";
import { CustosClient } from "../../src/client/index.js";
import { Secret } from "../../src/secret/index.js";
import { type CustosInstance, startCustos } from "../helpers/custos.js";
import { freePort } from "../helpers/ports.js";
import { waitFor } from "../helpers/wait.js";

type Json = Record<string, unknown>;

const nginxMissing = spawnSync("nginx", ["-v"]).error !== undefined;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function openssl(args: string[], input = ""): { status: number; out: string } {
  const r = spawnSync("openssl", args, { input, encoding: "utf8" });
  return { status: r.status ?? -1, out: `${r.stdout}${r.stderr}` };
}

/** The PEM blocks of a file, in order. */
const pemBlocks = (pem: string): string[] => pem.match(/-----BEGIN [^-]+-----[^-]+-----END [^-]+-----\n?/g) ?? [];

const fingerprint = (pem: string): string => createHash("sha256").update(new X509Certificate(pem).raw).digest("hex");

/** Whether `keyFile` holds the private key of the first certificate in `certFile`, by openssl. */
function pairMatches(certFile: string, keyFile: string): boolean {
  const fromCert = openssl(["x509", "-in", certFile, "-noout", "-pubkey"]);
  const fromKey = openssl(["pkey", "-in", keyFile, "-pubout"]);
  assert.equal(fromCert.status, 0, fromCert.out);
  assert.equal(fromKey.status, 0, fromKey.out);
  return fromCert.out === fromKey.out;
}

/** `openssl s_client` against a loopback port: the chain presented and the verify result, trusting `caFile`. */
function sClient(port: number, caFile: string, verify: string[]): { leaf: string; certs: number; out: string } {
  const r = openssl(
    ["s_client", "-connect", `127.0.0.1:${port}`, "-CAfile", caFile, "-showcerts", "-verify_return_error"].concat(
      verify,
    ),
  );
  const certs = pemBlocks(r.out);
  assert.ok(certs.length > 0, r.out);
  return { leaf: certs[0] as string, certs: certs.length, out: r.out };
}

/** An nginx.conf serving `cert`/`key` on `port`, including `extra.conf` (another admin's edits). */
function nginxConf(dir: string, port: number, cert: string, key: string): string {
  const conf = join(dir, "nginx.conf");
  if (!existsSync(join(dir, "extra.conf"))) writeFileSync(join(dir, "extra.conf"), "");
  writeFileSync(
    conf,
    `${process.getuid?.() === 0 ? "user root;\n" : ""}worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log notice;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path ${dir}/tmp-body;
  proxy_temp_path ${dir}/tmp-proxy;
  fastcgi_temp_path ${dir}/tmp-fastcgi;
  uwsgi_temp_path ${dir}/tmp-uwsgi;
  scgi_temp_path ${dir}/tmp-scgi;
  include ${dir}/extra.conf;
  server {
    listen 127.0.0.1:${port} ssl;
    server_name router.test;
    ssl_certificate ${cert};
    ssl_certificate_key ${key};
    location / { return 200 "ok\\n"; }
  }
}
`,
  );
  return conf;
}

/** `nginx -t` on `conf`: status and output. */
function nginxTest(dir: string, conf: string): { status: number; out: string } {
  const r = spawnSync("nginx", ["-t", "-p", dir, "-c", conf, "-e", join(dir, "error.log")], { encoding: "utf8" });
  return { status: r.status ?? -1, out: `${r.stdout}${r.stderr}` };
}

describe("certificate rotation against a real Custos and nginx", {
  skip: nginxMissing && "nginx is not installed",
}, () => {
  let custos: CustosInstance;
  let work: string;
  let caFile: string;
  let agentToken: string;
  let client: CustosClient;
  let nginx: ChildProcess | undefined;
  let port: number;
  let conf: string;
  /** The router endpoint's files, served by the nginx above. */
  const edge = { dir: "", cert: "", key: "", chain: "" };
  let shortNotAfter: number;
  const lines: string[] = [];
  const log = (level: AgentLogLevel, message: string) => {
    lines.push(`${level} ${message}`);
  };

  const call = async (method: string, path: string, body?: unknown): Promise<Json> => {
    const r = await custos.call(method, path, body);
    assert.equal(r.status, 200, `${method} ${path}: ${r.text}`);
    return r.body as Json;
  };
  const target = async (consumer: string): Promise<string> =>
    (((await call("GET", `/v1/pki/consumers/${consumer}`)).consumer as Json).target as Json).fingerprint as string;
  const files = (dir: string) => ({
    certFile: join(dir, "router.pem"),
    keyFile: join(dir, "router.key"),
    chainFile: join(dir, "chain.pem"),
  });
  const options = (consumer: string, dir: string, extra: Partial<CertAgentOptions> = {}): CertAgentOptions => ({
    consumer,
    role: "router",
    agentId: `edge-${consumer}`,
    ...files(dir),
    reloadCommand: "true",
    intervalMs: 1000,
    ...extra,
  });
  const nginxCmd = (...args: string[]) =>
    ["nginx", "-p", `'${edge.dir}'`, "-c", `'${conf}'`, "-e", `'${edge.dir}/error.log'`, ...args].join(" ");
  /** The edge's agent: reloads the real nginx and waits until it presents the new certificate. */
  const edgeAgent = async (reloadCommand = nginxCmd("-s", "reload")) => {
    const agent = new CertAgent(
      client,
      options("router", edge.dir, { reloadCommand, check: { host: "127.0.0.1", port }, checkTimeoutMs: 15_000 }),
      log,
    );
    await agent.init();
    return agent;
  };
  const presented = () => fingerprint(sClient(port, caFile, []).leaf);
  const dirFor = (name: string) => {
    const dir = join(work, name);
    mkdirSync(dir);
    return dir;
  };

  before(async () => {
    custos = await startCustos();
    work = mkdtempSync(join(tmpdir(), "custos-rotation-conformance-"));
    caFile = join(work, "ca.pem");
    writeFileSync(caFile, custos.ca);
    await call("PUT", "/v1/pki/roles/router", { dnsNames: ["router.test"] });
    // The shortest lifetime a role allows: it has expired by the time the last tests run.
    const short = await call("PUT", "/v1/pki/consumers/short", {
      role: "router",
      dnsNames: ["router.test"],
      ttlSeconds: 60,
    });
    shortNotAfter = Date.parse((((short.consumer as Json).target as Json).notAfter as string) ?? "");
    for (const name of ["router", "pair", "strace", "cli", "interval", "early"]) {
      await call("PUT", `/v1/pki/consumers/${name}`, { role: "router", dnsNames: ["router.test"] });
    }
    await call("PUT", "/v1/policies/edge-agent", { rules: [{ resource: "cert/*", actions: ["cert:agent"] }] });
    const t = await custos.call("POST", "/v1/auth/tokens", { name: "edge-agent", policies: ["edge-agent"] });
    assert.equal(t.status, 201, t.text);
    agentToken = (t.body as { token: string }).token;
    client = new CustosClient({
      address: custos.url,
      ca: Buffer.from(custos.ca),
      token: Secret.fromString(agentToken),
      retry: { retries: 0 },
    });

    // The edge: a first agent round writes its files, then nginx starts on them.
    edge.dir = dirFor("edge");
    edge.cert = join(edge.dir, "router.pem");
    edge.key = join(edge.dir, "router.key");
    edge.chain = join(edge.dir, "chain.pem");
    await new CertAgent(client, options("router", edge.dir), log).round();
    port = await freePort();
    conf = nginxConf(edge.dir, port, edge.cert, edge.key);
    nginx = spawn("nginx", ["-p", edge.dir, "-c", conf, "-e", join(edge.dir, "error.log"), "-g", "daemon off;"], {
      stdio: "ignore",
    });
    await waitFor("nginx to start", () => existsSync(join(edge.dir, "nginx.pid")));
  });
  after(async () => {
    client?.close();
    if (nginx && nginx.exitCode === null) {
      const exited = new Promise((r) => nginx?.once("exit", r));
      nginx.kill("SIGTERM");
      await exited;
    }
    await custos?.dispose();
    if (work) rmSync(work, { recursive: true, force: true });
  });

  test("the certificate file is leaf then intermediate: openssl verifies it against ca.pem, nginx presents that chain", () => {
    const blocks = pemBlocks(readFileSync(edge.cert, "utf8"));
    assert.equal(blocks.length, 2, "leaf and intermediate, no root");
    const [leaf, intermediate] = blocks.map((b) => new X509Certificate(b)) as [X509Certificate, X509Certificate];
    assert.equal(leaf.ca, false, "the leaf comes first");
    assert.ok(leaf.checkIssued(intermediate), "then the certificate that issued it");
    assert.equal(readFileSync(edge.chain, "utf8"), blocks[1], "the chain file is the intermediate alone");
    assert.ok(pairMatches(edge.cert, edge.key));
    const verify = openssl(["verify", "-CAfile", caFile, "-untrusted", edge.chain, edge.cert]);
    assert.equal(verify.status, 0, verify.out);
    const served = sClient(port, caFile, ["-servername", "router.test", "-verify_hostname", "router.test"]);
    assert.match(served.out, /Verify return code: 0 \(ok\)/);
    assert.equal(served.certs, 2);
  });

  test("a rotation replaces each file by rename: new inodes, the old inodes keep their old bytes, no temp file", async () => {
    const agent = await edgeAgent();
    const paths = [edge.cert, edge.key, edge.chain];
    const old = paths.map((p) => ({ bytes: readFileSync(p), ino: statSync(p).ino, fd: openSync(p, "r") }));
    try {
      await call("POST", "/v1/pki/consumers/router/rotate", {});
      const result = await agent.round();
      assert.equal(result.changed, true);
      for (const [i, p] of paths.entries()) {
        const o = old[i] as (typeof old)[number];
        assert.notEqual(statSync(p).ino, o.ino, `${p} was replaced, not rewritten in place`);
        const kept = Buffer.alloc(o.bytes.length);
        readSync(o.fd, kept, 0, kept.length, 0);
        assert.deepEqual(kept, o.bytes, `a reader holding the old ${p} still reads it whole`);
      }
    } finally {
      for (const o of old) closeSync(o.fd);
    }
    assert.equal(statSync(edge.key).mode & 0o777, 0o600);
    assert.deepEqual(
      readdirSync(edge.dir).filter((f) => f.endsWith(".tmp")),
      [],
    );
    assert.equal(presented(), await target("router"));
    assert.ok(pairMatches(edge.cert, edge.key));
  });

  test("a reload refused by `nginx -t` leaves the previous pair on disk, the pair nginx still serves", async () => {
    const served = presented();
    const agent = await edgeAgent(`${nginxCmd("-t")} && ${nginxCmd("-s", "reload")}`);
    writeFileSync(join(edge.dir, "extra.conf"), "this_is_not_a_directive;\n");
    try {
      await call("POST", "/v1/pki/consumers/router/rotate", {});
      await assert.rejects(agent.round(), { code: "reload_failed" });
      assert.equal(presented(), served, "nginx kept its running certificate");
      assert.equal(fingerprint(readFileSync(edge.cert, "utf8")), served, "the files are what nginx serves");
    } finally {
      writeFileSync(join(edge.dir, "extra.conf"), "");
      // Let the endpoint converge on the new target for the tests that follow.
      await agent.round();
    }
  });

  test("with Custos unreachable, --once exits 2 and leaves the files, their inodes and what nginx serves alone", async () => {
    const inodes = [edge.cert, edge.key, edge.chain].map((p) => statSync(p).ino);
    const served = presented();
    const down = await freePort();
    const r = custos.cli(
      ["agent", "cert", "--name", "router", "--role", "router", "--agent-id", "edge-router"].concat([
        "--cert",
        edge.cert,
        "--key",
        edge.key,
        "--chain",
        edge.chain,
        "--reload",
        nginxCmd("-s", "reload"),
        "--once",
      ]),
      { token: agentToken, env: { CUSTOS_ADDR: `https://127.0.0.1:${down}` } },
    );
    assert.equal(r.status, 2, r.stderr);
    assert.deepEqual(
      [edge.cert, edge.key, edge.chain].map((p) => statSync(p).ino),
      inodes,
    );
    assert.equal(presented(), served);
  });

  test("the key's temporary file is created 0600 and exclusive, fsynced, then renamed within its directory", () => {
    const dir = dirFor("strace");
    const { certFile, keyFile, chainFile } = files(dir);
    const trace = join(work, "strace.txt");
    const r = spawnSync(
      "strace",
      ["-f", "-qq", "-o", trace, "-e", "trace=openat,fsync,fdatasync,rename,renameat,renameat2"].concat(
        [process.execPath, join(import.meta.dirname, "../../bin/custos.js"), "agent", "cert"],
        ["--name", "strace", "--role", "router", "--agent-id", "edge-strace", "--cert", certFile, "--key", keyFile],
        ["--chain", chainFile, "--reload", "true", "--once"],
      ),
      {
        encoding: "utf8",
        env: {
          ...custos.env,
          CUSTOS_ADDR: custos.url,
          CUSTOS_CACERT: caFile,
          CUSTOS_TOKEN: agentToken,
          CUSTOS_TOKEN_FILE: "",
        },
        timeout: 120_000,
      },
    );
    assert.equal(r.status, 0, r.stderr);
    const syscalls = readFileSync(trace, "utf8").split("\n");
    const opened = syscalls.findIndex((l) => l.includes(`"${dir}/.router.key.`));
    const open = syscalls[opened] ?? "";
    assert.match(open, /openat\(AT_FDCWD, "[^"]+\.tmp", O_WRONLY\|O_CREAT\|O_EXCL[^,]*, 0600\) += \d+$/, open);
    const fd = /= +(\d+)$/.exec(open)?.[1];
    const temp = /"([^"]+)"/.exec(open)?.[1] as string;
    assert.equal(dirname(temp), dir);
    const renamed = syscalls.findIndex(
      (l) => /rename/.test(l) && l.includes(`"${temp}"`) && l.includes(`"${keyFile}"`),
    );
    assert.ok(renamed > opened, `renamed over ${keyFile}`);
    assert.ok(
      syscalls.slice(opened, renamed).some((l) => new RegExp(`f(data)?sync\\(${fd}\\) += 0`).test(l)),
      "fsynced before the rename",
    );
    assert.equal(statSync(keyFile).mode & 0o777, 0o600);
  });

  test("a rotation interrupted after the key is written never leaves a key and certificate that nginx refuses", async () => {
    const dir = dirFor("pair");
    const o = options("pair", dir);
    const agent = new CertAgent(client, o, log);
    await agent.round();
    // The chain's write fails, as a kill or a full disk would stop the agent between two renames.
    rmSync(o.chainFile);
    mkdirSync(join(o.chainFile, "in-the-way"), { recursive: true });
    await call("POST", "/v1/pki/consumers/pair/rotate", {});
    await assert.rejects(agent.round(), { code: "io_error" });
    const check = nginxTest(dir, nginxConf(dir, await freePort(), o.certFile, o.keyFile));
    assert.ok(pairMatches(o.certFile, o.keyFile), "the key on disk belongs to the certificate on disk");
    assert.equal(check.status, 0, `nginx -t, as at the next nginx start: ${check.out}`);
  });

  test("an --agent-id Custos refuses is a usage error before anything is fetched, written or reloaded", () => {
    const dir = dirFor("cli");
    const { certFile, keyFile, chainFile } = files(dir);
    const marker = join(dir, "reloaded");
    const r = custos.cli(
      ["agent", "cert", "--name", "cli", "--role", "router", "--agent-id", "edge one"].concat([
        "--cert",
        certFile,
        "--key",
        keyFile,
        "--chain",
        chainFile,
        "--reload",
        `touch '${marker}'`,
        "--once",
      ]),
      { token: agentToken },
    );
    assert.deepEqual({ status: r.status, written: readdirSync(dir) }, { status: 64, written: [] }, r.stderr);
    assert.match(r.stderr, /agent-id/);
  });

  test("a 30-day --interval pauses between rounds instead of looping (Node timers stop at 24.8 days)", async () => {
    const controller = new AbortController();
    let rounds = 0;
    // Bounds the run if the first round never ends; from the first round on, 5 s is time enough for a loop to show.
    let guard = setTimeout(() => controller.abort(), 120_000);
    const count = (level: AgentLogLevel, message: string) => {
      log(level, message);
      if (!/^(unchanged, )?reported: /.test(message)) return;
      if (++rounds >= 5) controller.abort();
      if (rounds === 1) {
        clearTimeout(guard);
        guard = setTimeout(() => controller.abort(), 5000);
      }
    };
    try {
      await runCertAgent(
        client,
        options("interval", dirFor("interval"), { intervalMs: 30 * 86_400_000 }),
        count,
        controller.signal,
      );
    } finally {
      clearTimeout(guard);
    }
    assert.equal(rounds, 1, "one round, then a 30-day pause");
  });

  test("an agent whose clock runs ahead asks to renew, but Custos issues nothing before renewAt", async () => {
    const issued = await target("early");
    const { notAfter } = ((await call("GET", "/v1/pki/consumers/early")).consumer as Json).target as Json;
    // Past renewAt, not yet past notAfter: a certificate the agent took as expired it would not install.
    const ahead = Date.parse(notAfter as string) - 3_600_000;
    const agent = new CertAgent(client, options("early", dirFor("early"), { now: () => ahead }), log);
    const result = await agent.round();
    assert.equal(result.renewed, true, "the agent asked");
    assert.deepEqual(
      { generation: result.generation, fingerprint: result.fingerprint },
      { generation: 1, fingerprint: issued },
    );
    assert.equal(await target("early"), issued, "and nothing was issued");
  });

  test("an expired target is never installed over a valid certificate: the agent renews before it reloads", async () => {
    const dir = dirFor("short");
    const o = options("short", dir);
    // The endpoint serves a valid certificate for its names (the edge's, copied).
    for (const [from, to] of [
      [edge.cert, o.certFile],
      [edge.key, o.keyFile],
      [edge.chain, o.chainFile],
    ] as const) {
      writeFileSync(to, readFileSync(from), { mode: 0o600 });
    }
    const reloads = join(dir, "reloads.log");
    const reloadCommand = `openssl x509 -in '${o.certFile}' -noout -checkend 0 >> '${reloads}' || echo expired >> '${reloads}'`;
    await sleep(Math.max(0, shortNotAfter + 1500 - Date.now()));
    const agent = new CertAgent(client, { ...o, reloadCommand }, log);
    await agent.init();
    const result = await agent.round();
    assert.equal(result.renewed, true);
    assert.equal(result.fingerprint, await target("short"));
    const seen = readFileSync(reloads, "utf8").trim().split("\n");
    assert.deepEqual(
      seen.filter((l) => l !== "Certificate will not expire"),
      [],
      `what each reload found: ${seen.join(" | ")}`,
    );
  });

  test("Custos starts after a server-certificate renewal stopped between writing server.key and server.pem", async () => {
    await custos.stop();
    const tls = join(custos.dir, "tls");
    const fresh = openssl(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]);
    assert.equal(fresh.status, 0, fresh.out);
    // The new key in place, the old certificate not yet replaced.
    writeFileSync(join(tls, "server.key"), fresh.out, { mode: 0o600 });
    await custos.start();
    const served = sClient(custos.port, join(tls, "ca.pem"), ["-verify_hostname", "localhost"]);
    assert.match(served.out, /Verify return code: 0 \(ok\)/);
    assert.ok(pairMatches(join(tls, "server.pem"), join(tls, "server.key")));
  });
});

describe("Custos renewing its own certificate while it serves", () => {
  let custos: CustosInstance;
  before(async () => {
    // Renewed at two thirds of its life: 20 s between renewals leaves the checks after the first one time to finish.
    custos = await startCustos({ tls: { serverCertTtlSeconds: 30, renewCheckSeconds: 1 } });
  });
  after(async () => {
    await custos?.dispose();
  });

  /** One keep-alive GET /v1/health on `agent`: its status and whether it went over an earlier connection. */
  const health = (agent: Agent) =>
    new Promise<{ status: number; reused: boolean }>((ok, fail) => {
      const req = request(
        { host: "127.0.0.1", port: custos.port, path: "/v1/health", ca: custos.ca, agent, servername: "localhost" },
        (res) => {
          res.resume();
          res.on("end", () => ok({ status: res.statusCode ?? 0, reused: req.reusedSocket }));
        },
      );
      req.on("error", fail);
      req.end();
    });
  const handshake = () =>
    new Promise<string>((ok, fail) => {
      const socket = connect({ host: "127.0.0.1", port: custos.port, servername: "localhost", ca: custos.ca }, () => {
        const raw = socket.getPeerCertificate().raw;
        socket.end();
        ok(createHash("sha256").update(raw).digest("hex"));
      });
      socket.on("error", fail);
    });

  test("an open connection keeps working; new handshakes get a certificate openssl verifies for localhost and 127.0.0.1", async () => {
    const tls = join(custos.dir, "tls");
    const agent = new Agent({ keepAlive: true, maxSockets: 1, keepAliveMsecs: 1000 });
    try {
      assert.equal((await health(agent)).status, 200);
      const first = await handshake();
      let now = first;
      for (let i = 0; i < 120 && now === first; i++) {
        await sleep(500);
        // Keep the connection busy so it stays open across the renewal.
        assert.equal((await health(agent)).status, 200);
        now = await handshake();
      }
      assert.notEqual(now, first, "the listener moved to a new certificate");
      assert.deepEqual(await health(agent), { status: 200, reused: true }, "the connection from before still answers");
    } finally {
      agent.destroy();
    }
    const ca = join(tls, "ca.pem");
    const byName = sClient(custos.port, ca, ["-servername", "localhost", "-verify_hostname", "localhost"]);
    assert.match(byName.out, /Verify return code: 0 \(ok\)/);
    assert.equal(byName.certs, 2, "leaf and intermediate");
    const byIp = sClient(custos.port, ca, ["-verify_ip", "127.0.0.1"]);
    assert.match(byIp.out, /Verify return code: 0 \(ok\)/);
    const san = openssl(["x509", "-noout", "-ext", "subjectAltName"], byName.leaf).out;
    assert.match(san, /DNS:localhost/);
    assert.match(san, /IP Address:127\.0\.0\.1/);
    const onDisk = readFileSync(join(tls, "server.pem"), "utf8");
    assert.equal(fingerprint(onDisk), fingerprint(byName.leaf), "server.pem is what is served");
    assert.ok(pairMatches(join(tls, "server.pem"), join(tls, "server.key")));
    assert.equal(statSync(join(tls, "server.key")).mode & 0o777, 0o600);
  });
});
