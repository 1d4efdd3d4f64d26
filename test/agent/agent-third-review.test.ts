/**
 * Third review of certificate consumers and the certificate agent: what an
 * operator of several nginx boxes trips on. Several agents on one consumer and a
 * stale one, a rollback in the middle of a rotation, an agent killed during its
 * reload, a check that fails after nginx took the new pair, a full disk, a role
 * narrowed under a consumer, a revoked token, an intermediate rollover, and no
 * private key in what an operator reads. Oracles: a real nginx, node:tls,
 * openssl, the file system.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { createHash, createPrivateKey, X509Certificate } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { connect, createServer, type Server } from "node:tls";
import {
  type AgentLogLevel,
  CertAgent,
  type CertAgentOptions,
  runCertAgent,
  STATE_SUFFIX,
} from "../../src/agent/index.js";
import { CustosClient } from "../../src/client/index.js";
import { Secret } from "../../src/secret/index.js";
import { type CustosInstance, errorCode, fetchRaw, ok, startCustos } from "../helpers/custos.js";
import { freePort } from "../helpers/ports.js";
import { waitFor } from "../helpers/wait.js";

type Json = Record<string, unknown>;

const nginxMissing = spawnSync("nginx", ["-v"]).error !== undefined;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** Long enough that an agent which has just reported is not stale while a test's few requests run, on a busy machine too. */
const STALE_SECONDS = 10;

const fingerprintOf = (pem: string | Buffer): string =>
  createHash("sha256").update(new X509Certificate(pem).raw).digest("hex");

/** The PEM blocks of a text, in order. */
const pemBlocks = (pem: string): string[] => pem.match(/-----BEGIN [^-]+-----[^-]+-----END [^-]+-----\n?/g) ?? [];

/** The fingerprint a TLS handshake with 127.0.0.1:`port` presents, verified against `ca` for `servername`. */
function presented(port: number, ca: string, servername: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: "127.0.0.1", port, ca, servername }, () => {
      const raw = socket.getPeerCertificate().raw;
      socket.end();
      resolve(createHash("sha256").update(raw).digest("hex"));
    });
    socket.on("error", reject);
  });
}

/** Whether `port` comes to present `fingerprint` on two handshakes in a row (old nginx workers linger). */
async function settlesOn(port: number, ca: string, fingerprint: string): Promise<string> {
  let last = "";
  let inRow = 0;
  for (let i = 0; i < 75 && inRow < 2; i++) {
    last = await presented(port, ca, "router.test");
    inRow = last === fingerprint ? inRow + 1 : 0;
    if (inRow < 2) await sleep(200);
  }
  return last;
}

/** `openssl s_client` trusting only the root in `ca`, checking `name`: its output and the chain presented. */
function sClient(port: number, name: string, ca: string): { out: string; certs: string[] } {
  const r = spawnSync(
    "openssl",
    ["s_client", "-connect", `127.0.0.1:${port}`, "-servername", name, "-CAfile", ca].concat([
      "-verify_hostname",
      name,
      "-verify_return_error",
      "-showcerts",
    ]),
    { input: "", encoding: "utf8" },
  );
  return { out: `${r.stdout}${r.stderr}`, certs: pemBlocks(r.stdout) };
}

describe("certificate consumers and agents: third review", () => {
  let custos: CustosInstance;
  let work: string;
  let agentToken: string;
  let client: CustosClient;
  const lines: string[] = [];
  const log = (level: AgentLogLevel, message: string) => {
    lines.push(`${level} ${message}`);
  };

  const call = async (method: string, path: string, body?: unknown): Promise<Json> =>
    ok(await custos.call(method, path, body));
  const view = async (name: string): Promise<Json> => (await call("GET", `/v1/pki/consumers/${name}`)).consumer as Json;
  const target = async (name: string): Promise<Json> => (await view(name)).target as Json;
  const agentIn = (c: Json, id: string): Json | undefined => (c.agents as Json[]).find((a) => a.id === id);
  const report = (name: string, id: string, fingerprint: string) =>
    call("PUT", `/v1/pki/consumers/${name}/agents/${id}`, { fingerprint });
  const dirFor = (name: string) => {
    const dir = join(work, name);
    mkdirSync(dir, { recursive: true });
    return dir;
  };
  const options = (consumer: string, dir: string, extra: Partial<CertAgentOptions> = {}): CertAgentOptions => ({
    consumer,
    role: "router",
    agentId: "edge-a",
    certFile: join(dir, "router.pem"),
    keyFile: join(dir, "router.key"),
    chainFile: join(dir, "chain.pem"),
    reloadCommand: "true",
    intervalMs: 1000,
    ...extra,
  });
  const rootFile = () => {
    const file = join(work, "root.pem");
    writeFileSync(file, custos.ca);
    return file;
  };
  const agentOn = async (o: CertAgentOptions) => {
    const agent = new CertAgent(client, o, log);
    await agent.init();
    return agent;
  };

  before(async () => {
    custos = await startCustos({
      pki: { agentStaleSeconds: STALE_SECONDS },
      tls: { serverCertTtlSeconds: 30, renewCheckSeconds: 1 },
    });
    work = mkdtempSync(join(tmpdir(), "custos-agent-third-"));
    await call("PUT", "/v1/pki/roles/router", { dnsNames: ["router.test", "*.apps.test"] });
    // Issued before the intermediate rollover below.
    await call("PUT", "/v1/pki/consumers/edge", { role: "router", dnsNames: ["router.test"] });
    await call("PUT", "/v1/policies/edge-agent", { rules: [{ resource: "cert/*", actions: ["cert:agent"] }] });
    agentToken = String(
      ok(await custos.call("POST", "/v1/auth/tokens", { name: "edge", policies: ["edge-agent"] }), 201).token,
    );
    client = new CustosClient({
      address: custos.url,
      ca: Buffer.from(custos.ca),
      token: Secret.fromString(agentToken),
      retry: { retries: 0 },
    });
  });
  after(async () => {
    client?.close();
    await custos?.dispose();
    if (work) rmSync(work, { recursive: true, force: true });
  });

  test("a lagging agent holds the rotation open and is named; once stale it no longer does", async () => {
    await call("PUT", "/v1/pki/consumers/pair", { role: "router", dnsNames: ["router.test"] });
    const fp1 = String((await target("pair")).fingerprint);
    await report("pair", "edge-a", fp1);
    await report("pair", "edge-b", fp1);
    await call("POST", "/v1/pki/consumers/pair/rotate", {});
    const fp2 = String((await target("pair")).fingerprint);
    const half = (await report("pair", "edge-a", fp2)).consumer as Json;
    assert.equal(half.state, "rotating", "edge-b still serves the old certificate");
    assert.deepEqual([agentIn(half, "edge-b")?.serves, agentIn(half, "edge-b")?.stale], ["previous", false]);
    assert.equal((half.rotation as Json).completedAt, null);
    await sleep((STALE_SECONDS + 1) * 1000);
    // edge-a reports every round; edge-b has gone quiet.
    const done = (await report("pair", "edge-a", fp2)).consumer as Json;
    assert.equal(agentIn(done, "edge-b")?.stale, true);
    assert.equal(done.state, "converged");
    assert.notEqual((done.rotation as Json).completedAt, null, "the rotation is recorded complete");
  });

  test("a rotation no live agent has to take up reads converged and completed alike", async () => {
    await call("PUT", "/v1/pki/consumers/lonely", { role: "router", dnsNames: ["router.test"] });
    const rotated = (await call("POST", "/v1/pki/consumers/lonely/rotate", {})).consumer as Json;
    assert.equal(rotated.state, "converged", "no agent to wait for");
    const completedAt = (rotated.rotation as Json).completedAt;
    assert.notEqual(completedAt, null, "completed, as docs/pki.md pairs the two");
    assert.equal(((await view("lonely")).rotation as Json).completedAt, completedAt, "recorded, not recomputed");
    const records = (await call("GET", "/v1/audit?action=cert.rotation.complete&limit=100")).records as Json[];
    assert.ok(
      records.some((r) => r.resource === "cert/lonely"),
      "the completion is audited",
    );
  });

  test("a rotation whose last lagging agent goes stale is completed when read, without any report", async () => {
    await call("PUT", "/v1/pki/consumers/quiet", { role: "router", dnsNames: ["router.test"] });
    await report("quiet", "edge-a", String((await target("quiet")).fingerprint));
    const rotating = (await call("POST", "/v1/pki/consumers/quiet/rotate", {})).consumer as Json;
    assert.deepEqual([rotating.state, (rotating.rotation as Json).completedAt], ["rotating", null]);
    await sleep((STALE_SECONDS + 1) * 1000);
    const c = await view("quiet");
    assert.equal(agentIn(c, "edge-a")?.stale, true);
    assert.equal(c.state, "converged");
    assert.notEqual((c.rotation as Json).completedAt, null);
    // Completed, a new rotation may start.
    const next = (await call("POST", "/v1/pki/consumers/quiet/rotate", {})).consumer as Json;
    assert.equal((next.target as Json).generation, 3);
  });

  test("a rollback mid-rotation: the agent on the new generation shows 'other', a second rollback and a rotate wait, the next rotate is generation 3", async () => {
    await call("PUT", "/v1/pki/consumers/back", { role: "router", dnsNames: ["router.test"] });
    const g1 = await target("back");
    await report("back", "edge-a", String(g1.fingerprint));
    await report("back", "edge-b", String(g1.fingerprint));
    await call("POST", "/v1/pki/consumers/back/rotate", {});
    const g2 = await target("back");
    await report("back", "edge-a", String(g2.fingerprint));
    const back = (await call("POST", "/v1/pki/consumers/back/rollback", {})).consumer as Json;
    assert.deepEqual([(back.target as Json).generation, back.previous, back.state], [1, null, "rotating"]);
    assert.equal(agentIn(back, "edge-a")?.serves, "other");
    assert.equal(errorCode(await custos.call("POST", "/v1/pki/consumers/back/rollback", {})), "conflict");
    assert.equal(errorCode(await custos.call("POST", "/v1/pki/consumers/back/rotate", {})), "conflict");
    // An agent still holding generation 2 asks to renew it: nothing is issued.
    const renewed = (await call("POST", "/v1/pki/consumers/back/renew", { fingerprint: g2.fingerprint }))
      .consumer as Json;
    assert.equal((renewed.target as Json).fingerprint, g1.fingerprint);
    const converged = (await report("back", "edge-a", String(g1.fingerprint))).consumer as Json;
    assert.equal(converged.state, "converged");
    assert.notEqual((converged.rotation as Json).completedAt, null);
    const third = (await call("POST", "/v1/pki/consumers/back/rotate", {})).consumer as Json;
    assert.deepEqual([(third.target as Json).generation, (third.previous as Json).generation], [3, 1]);
    const left = (await call("GET", `/v1/pki/certs/${String(g2.serial)}`)).certificate as Json;
    assert.equal(left.status, "valid", "the certificate rolled back from stays issued");
  });

  test("a full directory: the write fails, the files stay as served and are reported; freed, the next round installs", async (t) => {
    const dir = dirFor("full");
    const mount = spawnSync("mount", ["-t", "tmpfs", "-o", "size=64k", "tmpfs", dir], { stdio: "ignore" });
    if (mount.status !== 0) return t.skip("mounting a small tmpfs needs root");
    try {
      await call("PUT", "/v1/pki/consumers/full", { role: "router", dnsNames: ["router.test"] });
      const o = options("full", dir);
      const agent = await agentOn(o);
      await agent.round();
      const before = [o.certFile, o.keyFile, o.chainFile].map((f) => readFileSync(f));
      const filler = join(dir, "filler");
      spawnSync("dd", ["if=/dev/zero", `of=${filler}`, "bs=1k", "count=128"], { stdio: "ignore" });
      await call("POST", "/v1/pki/consumers/full/rotate", {});
      await assert.rejects(agent.round(), { code: "io_error" });
      assert.deepEqual(
        [o.certFile, o.keyFile, o.chainFile].map((f) => readFileSync(f)),
        before,
      );
      assert.deepEqual(
        readdirSync(dir).filter((f) => f.startsWith(".")),
        [],
        "no temporary file left",
      );
      const c = await view("full");
      assert.deepEqual([agentIn(c, "edge-a")?.serves, c.state], ["previous", "rotating"]);
      rmSync(filler);
      assert.equal((await agent.round()).changed, true);
      assert.equal(fingerprintOf(readFileSync(o.certFile)), (await target("full")).fingerprint);
      assert.ok(
        new X509Certificate(readFileSync(o.certFile)).checkPrivateKey(createPrivateKey(readFileSync(o.keyFile))),
      );
    } finally {
      spawnSync("umount", [dir], { stdio: "ignore" });
    }
  });

  test("a revoked token: --once exits 1 saying so and writes nothing; a running agent keeps its files and retries", async () => {
    await call("PUT", "/v1/pki/consumers/revoked", { role: "router", dnsNames: ["router.test"] });
    const made = ok(await custos.call("POST", "/v1/auth/tokens", { name: "doomed", policies: ["edge-agent"] }), 201);
    const token = String(made.token);
    const dir = dirFor("revoked");
    const o = options("revoked", dir);
    const running = new CustosClient({
      address: custos.url,
      ca: Buffer.from(custos.ca),
      token: Secret.fromString(token),
      retry: { retries: 0 },
    });
    try {
      const controller = new AbortController();
      let errors = 0;
      const watch = (level: AgentLogLevel, message: string) => {
        log(level, message);
        if (message.startsWith("reported")) void custos.call("DELETE", `/v1/auth/tokens/${String(made.id)}`);
        if (level === "error" && ++errors >= 2) controller.abort();
      };
      const last = await runCertAgent(running, { ...o, intervalMs: 200 }, watch, controller.signal);
      assert.equal(last?.fingerprint, (await target("revoked")).fingerprint);
      assert.match(lines.filter((l) => l.startsWith("error ")).at(-1) ?? "", /unknown, revoked or expired/);
      assert.equal(fingerprintOf(readFileSync(o.certFile)), last?.fingerprint, "the files stay");
    } finally {
      running.close();
    }
    const fresh = dirFor("revoked-once");
    const r = custos.cli(
      ["agent", "cert", "--name", "revoked", "--role", "router", "--agent-id", "edge-once"].concat(
        ["--cert", join(fresh, "c.pem"), "--key", join(fresh, "k.pem"), "--chain", join(fresh, "ch.pem")],
        ["--reload", "true", "--once"],
      ),
      { token },
    );
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, /the token is unknown, revoked or expired/);
    assert.deepEqual(readdirSync(fresh), []);
  });

  test("after an intermediate rollover, Custos's own listener moves to a certificate from the new intermediate, verified with the root alone", async () => {
    const rolled = await call("POST", "/v1/pki/issuers/rotate", {});
    const fresh = String((rolled.issuer as Json).id);
    const intermediate = new X509Certificate((await fetchRaw(custos, `/v1/pki/issuers/${fresh}/cert.pem`)).body);
    const leafFrom = () =>
      new Promise<X509Certificate>((resolve, reject) => {
        const socket = connect({ host: "127.0.0.1", port: custos.port, servername: "localhost", ca: custos.ca }, () => {
          const cert = new X509Certificate(socket.getPeerCertificate().raw);
          socket.end();
          resolve(cert);
        });
        socket.on("error", reject);
      });
    let leaf = await leafFrom();
    for (let i = 0; i < 120 && !leaf.checkIssued(intermediate); i++) {
      await sleep(500);
      leaf = await leafFrom();
    }
    assert.ok(leaf.checkIssued(intermediate), `the listener's certificate comes from ${fresh}`);
    const s = sClient(custos.port, "localhost", rootFile());
    assert.match(s.out, /Verify return code: 0 \(ok\)/, s.out);
    assert.equal(fingerprintOf(s.certs[1] as string), fingerprintOf(intermediate.toString()));
  });

  describe("beside a real nginx", { skip: nginxMissing && "nginx is not installed" }, () => {
    let nginx: ChildProcess | undefined;
    let port: number;
    const edge = { dir: "", cert: "", key: "", chain: "", reload: "" };
    let gen1Chain: string;
    const edgeOptions = (extra: Partial<CertAgentOptions> = {}) =>
      options("edge", edge.dir, {
        reloadCommand: `echo x >> '${edge.dir}/reloads'; ${edge.reload}`,
        check: { host: "127.0.0.1", port },
        checkTimeoutMs: 15_000,
        ...extra,
      });
    const reloads = () =>
      existsSync(join(edge.dir, "reloads")) ? readFileSync(join(edge.dir, "reloads"), "utf8").length / 2 : 0;
    const onDisk = () => fingerprintOf(readFileSync(edge.cert));

    before(async () => {
      edge.dir = dirFor("edge");
      edge.cert = join(edge.dir, "router.pem");
      edge.key = join(edge.dir, "router.key");
      edge.chain = join(edge.dir, "chain.pem");
      port = await freePort();
      const conf = join(edge.dir, "nginx.conf");
      writeFileSync(
        conf,
        `${process.getuid?.() === 0 ? "user root;\n" : ""}worker_processes 1;
pid ${edge.dir}/nginx.pid;
error_log ${edge.dir}/error.log notice;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path ${edge.dir}/tmp-body;
  proxy_temp_path ${edge.dir}/tmp-proxy;
  fastcgi_temp_path ${edge.dir}/tmp-fastcgi;
  uwsgi_temp_path ${edge.dir}/tmp-uwsgi;
  scgi_temp_path ${edge.dir}/tmp-scgi;
  server {
    listen 127.0.0.1:${port} ssl;
    server_name router.test;
    ssl_certificate ${edge.cert};
    ssl_certificate_key ${edge.key};
    location / { return 200 "ok\\n"; }
  }
}
`,
      );
      const prefix = ["-p", edge.dir, "-c", conf, "-e", join(edge.dir, "error.log")];
      edge.reload = ["nginx", ...prefix.map((a) => `'${a}'`), "-s", "reload"].join(" ");
      // The first round writes the files nginx starts on.
      await new CertAgent(client, options("edge", edge.dir), log).round();
      gen1Chain = readFileSync(edge.chain, "utf8");
      nginx = spawn("nginx", [...prefix, "-g", "daemon off;"], { stdio: "ignore" });
      await waitFor("nginx to start", () => existsSync(join(edge.dir, "nginx.pid")));
    });
    after(async () => {
      if (nginx && nginx.exitCode === null) {
        const exited = new Promise((r) => nginx?.once("exit", r));
        nginx.kill("SIGTERM");
        await exited;
      }
    });

    test("a check that fails after nginx took the new pair puts the served pair back and reloads nginx onto it", async () => {
      const served = onDisk();
      assert.equal(await settlesOn(port, custos.ca, served), served);
      // The check address (a load balancer in front, say) keeps presenting the old certificate.
      const lb: Server = createServer({ cert: readFileSync(edge.cert), key: readFileSync(edge.key) });
      await new Promise<void>((r) => lb.listen(0, "127.0.0.1", r));
      try {
        const lbPort = (lb.address() as AddressInfo).port;
        const agent = await agentOn(edgeOptions({ check: { host: "127.0.0.1", port: lbPort }, checkTimeoutMs: 1500 }));
        assert.equal(agent.served, served);
        await call("POST", "/v1/pki/consumers/edge/rotate", {});
        const before = reloads();
        await assert.rejects(agent.round(), { code: "check_failed" });
        assert.equal(reloads(), before + 2, "reloaded onto the new pair, then back");
      } finally {
        await new Promise((r) => lb.close(r));
      }
      assert.equal(onDisk(), served, "the served pair is on disk again");
      assert.equal(await settlesOn(port, custos.ca, served), served, "and nginx serves it again");
      const c = await view("edge");
      assert.deepEqual([agentIn(c, "edge-a")?.fingerprint, c.state], [served, "rotating"]);
      // Checked against nginx itself, the next round installs the new generation.
      await (await agentOn(edgeOptions())).round();
      const fp2 = String((await target("edge")).fingerprint);
      assert.equal(await settlesOn(port, custos.ca, fp2), fp2);
    });

    test("an agent killed during its reload, restarted while reloads fail, keeps reporting what nginx serves", async () => {
      const served = onDisk();
      await call("POST", "/v1/pki/consumers/edge/rotate", {});
      const next = String((await target("edge")).fingerprint);
      // The reload command kills the agent itself: a crash between the renames and the reload's end.
      const killed = custos.cli(
        ["agent", "cert", "--name", "edge", "--role", "router", "--agent-id", "edge-a"].concat(
          ["--cert", edge.cert, "--key", edge.key, "--chain", edge.chain, "--check", `127.0.0.1:${port}`],
          ["--reload", "kill -9 $PPID", "--once"],
        ),
        { token: agentToken },
      );
      assert.equal(killed.status, -1, killed.stderr);
      assert.equal(onDisk(), next, "the new files are in place");
      assert.equal(readFileSync(`${edge.cert}${STATE_SUFFIX}`, "utf8").trim(), served);
      assert.equal(await settlesOn(port, custos.ca, served), served, "nginx still serves the old pair");
      // Restarted, its reloads now fail (nginx refuses the configuration, say).
      const restarted = await agentOn(edgeOptions({ reloadCommand: "echo 'nginx: [emerg] refused' >&2; exit 1" }));
      await sleep((STALE_SECONDS + 1) * 1000);
      const since = Date.now();
      await assert.rejects(restarted.round(), { code: "reload_failed" });
      // A second box took the new certificate.
      await report("edge", "edge-b", next);
      const c = await view("edge");
      assert.deepEqual(
        readdirSync(edge.dir).filter((f) => f.endsWith(".tmp")),
        [],
        "the killed agent's copies (one of a private key) are gone",
      );
      assert.equal(onDisk(), served, "the served pair is on disk again, as a restarted nginx would serve it");
      assert.ok(new X509Certificate(readFileSync(edge.cert)).checkPrivateKey(createPrivateKey(readFileSync(edge.key))));
      assert.equal(await presented(port, custos.ca, "router.test"), served, "nginx presents the old certificate");
      assert.equal(c.state, "rotating", `so the rotation is not done: ${JSON.stringify(c.agents)}`);
      const a = agentIn(c, "edge-a");
      assert.equal(a?.fingerprint, served, "the agent reports the certificate nginx presents");
      assert.ok(Date.parse(String(a?.reportedAt)) >= since - 1000, "since its restart");
    });

    test("a consumer issued before the intermediate rollover: its next rotation brings leaf and chain from the new intermediate, verified with the root alone", async () => {
      const issuers = JSON.parse((await fetchRaw(custos, "/v1/pki/issuers")).body.toString()).issuers as Json[];
      const active = issuers.find((i) => i.kind === "intermediate" && i.state === "active");
      const intermediate = (await fetchRaw(custos, `/v1/pki/issuers/${String(active?.id)}/cert.pem`)).body.toString();
      const agent = await agentOn(edgeOptions());
      // Whatever the tests before left, the edge first serves the target, then a new one is staged.
      await agent.round();
      await report("edge", "edge-b", String((await target("edge")).fingerprint));
      await call("POST", "/v1/pki/consumers/edge/rotate", {});
      await agent.round();
      const fp = String((await target("edge")).fingerprint);
      assert.equal(await settlesOn(port, custos.ca, fp), fp);
      assert.notEqual(gen1Chain, intermediate, "generation 1 came from the retiring intermediate");
      assert.equal(readFileSync(edge.chain, "utf8"), intermediate, "the chain file is the new intermediate");
      const s = sClient(port, "router.test", rootFile());
      assert.match(s.out, /Verify return code: 0 \(ok\)/, s.out);
      assert.equal(s.certs.length, 2);
      assert.equal(fingerprintOf(s.certs[1] as string), fingerprintOf(intermediate));
    });
  });

  test("a role narrowed under a consumer: rotate is refused and stages nothing; agents past renewAt keep serving, and renew once it is widened", async () => {
    await call("PUT", "/v1/pki/roles/narrow", { dnsNames: ["router.test", "www.apps.test"] });
    // The shortest lifetime there is, so that its renewAt comes within the test.
    await call("PUT", "/v1/pki/consumers/narrowed", {
      role: "narrow",
      dnsNames: ["router.test", "www.apps.test"],
      ttlSeconds: 60,
    });
    const dir = dirFor("narrowed");
    const o = { ...options("narrowed", dir), role: "narrow", intervalMs: 300 };
    const first = await (await agentOn(o)).round();
    await call("PUT", "/v1/pki/roles/narrow", { dnsNames: ["router.test"] });
    const refused = await custos.call("POST", "/v1/pki/consumers/narrowed/rotate", {});
    assert.equal(errorCode(refused), "name_not_allowed", refused.text);
    assert.equal((await target("narrowed")).fingerprint, first.fingerprint, "nothing staged");
    const material = ok(await custos.call("GET", `/v1/pki/consumers/narrowed/certificate?known=${first.fingerprint}`));
    await sleep(Math.max(0, Date.parse(String(material.renewAt)) - Date.now() + 500));
    const controller = new AbortController();
    let errors = 0;
    const watch = (level: AgentLogLevel, message: string) => {
      log(level, message);
      if (level === "error" && ++errors === 2) {
        void custos.call("PUT", "/v1/pki/roles/narrow", { dnsNames: ["router.test", "www.apps.test"] });
      }
      if (message.startsWith("renewed:")) controller.abort();
    };
    // Only bounds a run that would not end: the test fails then anyway.
    const guard = setTimeout(() => controller.abort(), 120_000);
    try {
      await runCertAgent(client, o, watch, controller.signal);
    } finally {
      clearTimeout(guard);
    }
    assert.notEqual((await target("narrowed")).fingerprint, first.fingerprint, "renewed once the role allowed it");
  });

  test("no private key reaches the agents' log, the consumers' status, the audit log or the server log", async () => {
    const keys = readdirSync(work, { recursive: true, encoding: "utf8" })
      .filter((f) => f.endsWith("router.key"))
      .map((f) => readFileSync(join(work, f), "utf8"));
    assert.ok(keys.length >= 2, "keys written by the agents");
    const needles = keys.flatMap((pem) => {
      const der = createPrivateKey(pem).export({ type: "pkcs8", format: "der" });
      return [der.toString("base64").slice(40, 120), String(createPrivateKey(pem).export({ format: "jwk" }).d)];
    });
    const audit = await custos.call("GET", "/v1/audit?limit=1000");
    const texts = {
      "agent log": lines.join("\n"),
      status: (await custos.call("GET", "/v1/pki/consumers")).text,
      audit: audit.text,
      "server log": readFileSync(custos.logFile, "utf8"),
    };
    assert.ok(audit.text.includes("cert.agent.report"), "the audit answer holds the agents' records");
    for (const [where, text] of Object.entries(texts)) {
      assert.doesNotMatch(text, /PRIVATE KEY/, where);
      for (const needle of needles) assert.equal(text.includes(needle), false, `${where} holds a private key`);
    }
  });
});
