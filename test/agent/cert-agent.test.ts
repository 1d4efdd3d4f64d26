import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { createHash, X509Certificate } from "node:crypto";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable, Writable } from "node:stream";
import { after, afterEach, before, beforeEach, describe, test } from "node:test";
import { createSecureContext, createServer, type Server } from "node:tls";
import { Command } from "commander";
import {
  type AgentLogLevel,
  CertAgent,
  CertAgentError,
  type CertAgentOptions,
  defaultServername,
  runCertAgent,
  runReload,
  STATE_SUFFIX,
  writeFileAtomic,
} from "../../src/agent/index.js";
import { registerAgentCommands } from "../../src/cli/commands/agent.js";
import { CliContext } from "../../src/cli/context.js";
import { exitCodeOf, formatError, isCommanderError } from "../../src/cli/errors.js";
import { ClientError, CustosClient } from "../../src/client/index.js";
import { Secret } from "../../src/secret/index.js";
import { type Recorded, startServer, type TestServer } from "../client/server.js";
import { waitFor } from "../helpers/wait.js";

interface Leaf {
  readonly cert: string;
  readonly key: string;
  readonly fingerprint: string;
}

/** A throwaway CA and leaves from `openssl`, an oracle independent of the agent's own parsing. */
function makePki(dir: string) {
  const run = (args: string[]) => execFileSync("openssl", args, { cwd: dir, stdio: "pipe" });
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
  run(["req", "-x509", ...ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=agent-test-ca"]);
  writeFileSync(join(dir, "ext.cnf"), "subjectAltName=DNS:*.apps.test,DNS:router.test,IP:127.0.0.1\n");
  let serial = 1;
  const leaf = (days = 1): Leaf => {
    const n = serial++;
    run(["req", ...ec, "-keyout", `leaf${n}.key`, "-out", `leaf${n}.csr`, "-subj", "/CN=router.test"]);
    run([
      "x509",
      "-req",
      "-in",
      `leaf${n}.csr`,
      "-CA",
      "ca.pem",
      "-CAkey",
      "ca.key",
      "-set_serial",
      String(n),
      "-days",
      String(days),
      "-extfile",
      "ext.cnf",
      "-out",
      `leaf${n}.pem`,
    ]);
    const cert = readFileSync(join(dir, `leaf${n}.pem`), "utf8");
    const der = Buffer.from(cert.replace(/-----[A-Z ]+-----|\s/g, ""), "base64");
    return {
      cert,
      key: readFileSync(join(dir, `leaf${n}.key`), "utf8"),
      fingerprint: createHash("sha256").update(der).digest("hex"),
    };
  };
  return { ca: readFileSync(join(dir, "ca.pem"), "utf8"), leaf };
}

const DAY_MS = 86_400_000;
const FUTURE = "2999-01-01T00:00:00.000Z";
const PAST = "2000-01-01T00:00:00.000Z";

/** Sets or clears a file's immutable flag; false when that is not possible here. */
function immutable(file: string, on: boolean): boolean {
  return spawnSync("chattr", [on ? "+i" : "-i", file], { stdio: "ignore" }).status === 0;
}

/**
 * A stand-in for the consumer endpoints of docs/pki.md: it serves `target`
 * (unchanged when `known` names it), records reports, and renews to `next`.
 */
class FakeConsumer {
  target: Leaf;
  next: Leaf | undefined;
  generation = 1;
  renewAt = FUTURE;
  refuse: { status: number; code: string } | undefined;
  readonly reports: { agent: string; fingerprint: string }[] = [];
  readonly fetches: URLSearchParams[] = [];
  renewals = 0;

  constructor(
    readonly ca: string,
    first: Leaf,
  ) {
    this.target = first;
  }

  reply = (req: Recorded) => {
    const url = new URL(req.url, "https://fake");
    if (this.refuse !== undefined) {
      return {
        status: this.refuse.status,
        body: { error: { code: this.refuse.code, message: "refused by the fake" } },
      };
    }
    const head = {
      generation: this.generation,
      serial: "0a",
      fingerprint: this.target.fingerprint,
      notBefore: PAST,
      notAfter: FUTURE,
      renewAt: this.renewAt,
    };
    const view = () => ({ consumer: { name: "router", target: { fingerprint: this.target.fingerprint } } });
    if (req.method === "GET" && url.pathname === "/v1/pki/consumers/router/certificate") {
      this.fetches.push(url.searchParams);
      if (url.searchParams.get("known") === this.target.fingerprint) return { body: { ...head, unchanged: true } };
      return { body: { ...head, certificate: this.target.cert, chain: this.ca, privateKey: this.target.key } };
    }
    const agent = /^\/v1\/pki\/consumers\/router\/agents\/([^/]+)$/.exec(url.pathname)?.[1];
    if (req.method === "PUT" && agent !== undefined) {
      this.reports.push({ agent: decodeURIComponent(agent), fingerprint: JSON.parse(req.body).fingerprint });
      return { body: view() };
    }
    if (req.method === "POST" && url.pathname === "/v1/pki/consumers/router/renew") {
      this.renewals++;
      assert.equal(JSON.parse(req.body).fingerprint, this.target.fingerprint);
      if (this.next !== undefined) {
        this.target = this.next;
        this.next = undefined;
        this.generation++;
        this.renewAt = FUTURE;
      }
      return { body: view() };
    }
    return { status: 404, body: { error: { code: "not_found", message: `no route ${req.method} ${url.pathname}` } } };
  };
}

describe("certificate agent", () => {
  let pkiDir: string;
  let pki: ReturnType<typeof makePki>;
  let leaves: Leaf[];
  let server: TestServer;
  let client: CustosClient;
  let dir: string;
  let fake: FakeConsumer;
  let lines: string[];
  const log = (level: AgentLogLevel, message: string) => {
    lines.push(`${level} ${message}`);
  };

  before(async () => {
    pkiDir = mkdtempSync(join(tmpdir(), "custos-agent-pki-"));
    pki = makePki(pkiDir);
    // The last lives a month: still valid on a clock moved past the others' end.
    leaves = [pki.leaf(), pki.leaf(), pki.leaf(), pki.leaf(30)];
    server = await startServer();
  });
  after(async () => {
    await server?.close();
    rmSync(pkiDir, { recursive: true, force: true });
  });
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), "custos-agent-"));
    fake = new FakeConsumer(pki.ca, leaves[0] as Leaf);
    server.reply = fake.reply;
    server.requests.length = 0;
    lines = [];
    client = new CustosClient({
      address: server.url,
      ca: server.ca,
      token: Secret.fromString("cst_agent_token"),
      retry: { retries: 0 },
    });
  });
  afterEach(() => {
    client.close();
    rmSync(dir, { recursive: true, force: true });
  });

  /** Options whose reload appends a line to `reloads`, and fails while `reload.fail` exists. */
  const options = (extra: Partial<CertAgentOptions> = {}): CertAgentOptions => ({
    consumer: "router",
    role: "router",
    agentId: "edge-a",
    certFile: join(dir, "router.pem"),
    keyFile: join(dir, "router.key"),
    chainFile: join(dir, "chain.pem"),
    reloadCommand: `if [ -e '${dir}/reload.fail' ]; then echo 'nginx: [emerg] cannot load' >&2; exit 3; fi; echo x >> '${dir}/reloads'`,
    intervalMs: 1000,
    ...extra,
  });
  const reloads = () => (existsSync(join(dir, "reloads")) ? readFileSync(join(dir, "reloads"), "utf8").length / 2 : 0);
  const leaf = (i: number) => leaves[i] as Leaf;
  const agentOn = async (extra: Partial<CertAgentOptions> = {}) => {
    const agent = new CertAgent(client, options(extra), log);
    await agent.init();
    return agent;
  };

  test("the first round writes key (0600), chain and leaf+chain, reloads once and reports", async () => {
    const agent = await agentOn();
    const result = await agent.round();
    assert.deepEqual(result, { generation: 1, fingerprint: leaf(0).fingerprint, changed: true, renewed: false });
    assert.equal(readFileSync(join(dir, "router.key"), "utf8"), leaf(0).key);
    assert.equal(readFileSync(join(dir, "chain.pem"), "utf8"), pki.ca);
    assert.equal(readFileSync(join(dir, "router.pem"), "utf8"), leaf(0).cert + pki.ca);
    assert.equal(statSync(join(dir, "router.key")).mode & 0o777, 0o600);
    assert.equal(statSync(join(dir, "router.pem")).mode & 0o777, 0o644);
    assert.deepEqual(
      readdirSync(dir).sort(),
      ["chain.pem", "reloads", "router.key", "router.pem", `router.pem${STATE_SUFFIX}`],
      "no temp files",
    );
    assert.equal(readFileSync(join(dir, `router.pem${STATE_SUFFIX}`), "utf8"), `${leaf(0).fingerprint}\n`);
    assert.equal(reloads(), 1);
    assert.deepEqual(fake.reports, [{ agent: "edge-a", fingerprint: leaf(0).fingerprint }]);
    const first = fake.fetches[0];
    assert.equal(first?.get("role"), "router");
    assert.equal(first?.has("known"), false, "nothing served yet, so nothing known");
    assert.ok(
      lines.every((l) => !l.includes("PRIVATE KEY")),
      "the key never reaches the log",
    );
  });

  test("an unchanged target is reported every round without rewriting or reloading", async () => {
    const agent = await agentOn();
    await agent.round();
    const before = statSync(join(dir, "router.pem"));
    const again = await agent.round();
    assert.equal(again.changed, false);
    assert.equal(fake.fetches[1]?.get("known"), leaf(0).fingerprint);
    assert.equal(reloads(), 1);
    assert.equal(statSync(join(dir, "router.pem")).ino, before.ino);
    assert.equal(fake.reports.length, 2);
  });

  test("a restarted agent reads what it serves from the files and neither rewrites nor reloads", async () => {
    await (await agentOn()).round();
    const inode = statSync(join(dir, "router.key")).ino;
    const restarted = await agentOn();
    assert.equal(restarted.served, leaf(0).fingerprint);
    const result = await restarted.round();
    assert.equal(result.changed, false);
    assert.equal(fake.fetches.at(-1)?.get("known"), leaf(0).fingerprint);
    assert.equal(reloads(), 1);
    assert.equal(statSync(join(dir, "router.key")).ino, inode);
  });

  test("files whose key does not match the certificate are not taken as served", async () => {
    await (await agentOn()).round();
    writeFileSync(join(dir, "router.key"), leaf(1).key);
    const restarted = await agentOn();
    assert.equal(restarted.served, undefined);
    assert.equal((await restarted.round()).changed, true);
    assert.equal(readFileSync(join(dir, "router.key"), "utf8"), leaf(0).key);
  });

  test("a new target replaces the files, the key mode stays 0600 whatever the old file and the umask", async () => {
    const agent = await agentOn();
    await agent.round();
    const { chmodSync } = await import("node:fs");
    chmodSync(join(dir, "router.key"), 0o644);
    fake.target = leaf(1);
    fake.generation = 2;
    const umask = process.umask(0);
    try {
      assert.equal((await agent.round()).changed, true);
    } finally {
      process.umask(umask);
    }
    assert.equal(statSync(join(dir, "router.key")).mode & 0o777, 0o600);
    assert.equal(readFileSync(join(dir, "router.key"), "utf8"), leaf(1).key);
    assert.equal(fake.reports.at(-1)?.fingerprint, leaf(1).fingerprint);
    assert.equal(reloads(), 2);
  });

  test("a failing reload is an error, the new fingerprint is not reported, and the next round tries again", async () => {
    const agent = await agentOn();
    await agent.round();
    fake.target = leaf(1);
    fake.generation = 2;
    writeFileSync(join(dir, "reload.fail"), "");
    await assert.rejects(agent.round(), (e: unknown) => {
      assert.ok(e instanceof CertAgentError);
      assert.equal(e.code, "reload_failed");
      assert.match(e.message, /status 3: nginx: \[emerg\] cannot load/);
      return true;
    });
    assert.equal(agent.served, leaf(0).fingerprint);
    assert.ok(
      fake.reports.every((r) => r.fingerprint === leaf(0).fingerprint),
      "only what is still served is reported",
    );
    // The served files are back, and the agent asks as their holder.
    rmSync(join(dir, "reload.fail"));
    assert.equal((await agent.round()).changed, true);
    assert.equal(fake.fetches.at(-1)?.get("known"), leaf(0).fingerprint);
    assert.equal(fake.reports.at(-1)?.fingerprint, leaf(1).fingerprint);
  });

  test("a failed reload puts the served files back; a restarted agent serves them and installs the new pair", async () => {
    await (await agentOn()).round();
    fake.target = leaf(1);
    fake.generation = 2;
    writeFileSync(join(dir, "reload.fail"), "");
    await assert.rejects((await agentOn()).round(), { code: "reload_failed" });
    assert.equal(readFileSync(join(dir, "router.key"), "utf8"), leaf(0).key, "the served key is back");
    assert.equal(
      readFileSync(join(dir, "router.pem"), "utf8"),
      leaf(0).cert + pki.ca,
      "the served certificate is back",
    );
    assert.deepEqual(
      readdirSync(dir).filter((f) => f.endsWith(".tmp")),
      [],
      "no copies left behind",
    );
    rmSync(join(dir, "reload.fail"));
    const restarted = await agentOn();
    assert.equal(restarted.served, leaf(0).fingerprint);
    assert.equal((await restarted.round()).changed, true);
    assert.equal(readFileSync(join(dir, "router.key"), "utf8"), leaf(1).key);
    assert.deepEqual(
      fake.reports.map((r) => r.fingerprint),
      [leaf(0).fingerprint, leaf(0).fingerprint, leaf(1).fingerprint],
    );
  });

  /**
   * What an agent killed during its reload leaves: the new pair (`to`) in place, its
   * copies of the served one beside it, one new file never renamed, the state file
   * naming the served certificate.
   */
  const killedDuringReload = (to: Leaf) => {
    const copy = (name: string, random: string, mode: number) =>
      writeFileSync(join(dir, `.${name}.${random}.tmp`), readFileSync(join(dir, name)), { mode });
    copy("router.key", "0123456789ab", 0o600);
    copy("chain.pem", "1123456789ab", 0o644);
    copy("router.pem", "2123456789ab", 0o644);
    writeFileSync(join(dir, ".router.key.3123456789ab.tmp"), to.key, { mode: 0o600 });
    writeFileSync(join(dir, "router.key"), to.key, { mode: 0o600 });
    writeFileSync(join(dir, "router.pem"), to.cert + pki.ca);
  };

  test("restarted after an agent was killed during its reload, it puts the served files back from its copies and removes them", async () => {
    await (await agentOn()).round();
    killedDuringReload(leaf(1));
    writeFileSync(join(dir, "unrelated.tmp"), "");
    const restarted = await agentOn();
    assert.equal(restarted.served, leaf(0).fingerprint);
    assert.equal(readFileSync(join(dir, "router.key"), "utf8"), leaf(0).key);
    assert.equal(readFileSync(join(dir, "router.pem"), "utf8"), leaf(0).cert + pki.ca);
    assert.equal(readFileSync(join(dir, "chain.pem"), "utf8"), pki.ca);
    assert.equal(statSync(join(dir, "router.key")).mode & 0o777, 0o600);
    assert.deepEqual(
      readdirSync(dir).filter((f) => f.endsWith(".tmp")),
      ["unrelated.tmp"],
      "its own leftovers, a key copy among them, are gone; nothing else",
    );
    // A reload that fails now has the served pair to go back to, and it is what is reported.
    fake.target = leaf(1);
    fake.generation = 2;
    writeFileSync(join(dir, "reload.fail"), "");
    await assert.rejects(restarted.round(), { code: "reload_failed" });
    assert.equal(readFileSync(join(dir, "router.key"), "utf8"), leaf(0).key);
    assert.equal(fake.reports.at(-1)?.fingerprint, leaf(0).fingerprint);
    assert.equal(reloads(), 1);
  });

  test("files a failed first reload left behind stay for the endpoint, but are not taken as served", async () => {
    writeFileSync(join(dir, "reload.fail"), "");
    await assert.rejects((await agentOn()).round(), { code: "reload_failed" });
    assert.equal(readFileSync(join(dir, "router.key"), "utf8"), leaf(0).key, "nothing to go back to: the files stay");
    rmSync(join(dir, "reload.fail"));
    const restarted = await agentOn();
    assert.equal(restarted.served, undefined);
    assert.equal((await restarted.round()).changed, true);
    assert.equal(reloads(), 1, "reloaded, since the files had never been");
    assert.deepEqual(
      fake.reports.map((r) => r.fingerprint),
      [leaf(0).fingerprint],
    );
  });

  test("a reload failure on the very first round reports nothing at all", async () => {
    writeFileSync(join(dir, "reload.fail"), "");
    const agent = await agentOn();
    await assert.rejects(agent.round(), { code: "reload_failed" });
    assert.deepEqual(fake.reports, []);
  });

  test("material whose key does not match its certificate is refused and nothing is written", async () => {
    fake.target = { ...leaf(0), key: leaf(1).key };
    const agent = await agentOn();
    await assert.rejects(agent.round(), { code: "invalid_material" });
    assert.deepEqual(readdirSync(dir), []);
    assert.equal(reloads(), 0);
    assert.deepEqual(fake.reports, []);
  });

  test("material whose certificate is not the announced fingerprint is refused", async () => {
    fake.target = { ...leaf(0), fingerprint: leaf(1).fingerprint };
    const agent = await agentOn();
    await assert.rejects(agent.round(), { code: "invalid_material" });
    assert.deepEqual(readdirSync(dir), []);
  });

  test("after renewAt it asks for renewal with the served fingerprint and installs the renewed certificate", async () => {
    const agent = await agentOn();
    await agent.round();
    assert.equal(fake.renewals, 0, "not before renewAt");
    fake.renewAt = PAST;
    fake.next = leaf(2);
    const result = await agent.round();
    assert.equal(fake.renewals, 1);
    assert.deepEqual(result, { generation: 2, fingerprint: leaf(2).fingerprint, changed: true, renewed: true });
    assert.equal(fake.reports.at(-1)?.fingerprint, leaf(2).fingerprint);
    assert.equal(readFileSync(join(dir, "router.key"), "utf8"), leaf(2).key);
  });

  test("a renewal that leaves the target as it was (another agent renewed, a rotation runs) changes nothing", async () => {
    const agent = await agentOn();
    fake.renewAt = PAST;
    const result = await agent.round();
    assert.equal(result.renewed, true);
    assert.equal(result.fingerprint, leaf(0).fingerprint);
    assert.equal(reloads(), 1);
  });

  test("an expired target is not installed: the agent renews first and installs only the renewed certificate", async () => {
    // Two days on, leaf 0 (one day) has expired and leaf 3 (a month) has not.
    const agent = await agentOn({ now: () => Date.now() + 2 * DAY_MS });
    fake.next = leaf(3);
    const result = await agent.round();
    assert.equal(fake.renewals, 1, "renewal asked for the expired target");
    assert.deepEqual(result, { generation: 2, fingerprint: leaf(3).fingerprint, changed: true, renewed: true });
    assert.equal(reloads(), 1, "one reload, of the renewed certificate");
    assert.equal(readFileSync(join(dir, "router.key"), "utf8"), leaf(3).key);
    assert.deepEqual(fake.reports, [{ agent: "edge-a", fingerprint: leaf(3).fingerprint }]);
  });

  test("an expired target Custos does not renew leaves the valid files in place, unreported", async () => {
    let ahead = 0;
    const agent = await agentOn({ now: () => Date.now() + ahead });
    fake.target = leaf(3);
    await agent.round();
    fake.target = leaf(0);
    fake.generation = 2;
    ahead = 2 * DAY_MS;
    await assert.rejects(agent.round(), (e: unknown) => {
      assert.ok(e instanceof CertAgentError);
      assert.equal(e.code, "invalid_material");
      assert.match(e.message, /expired at .*Custos renewed nothing/);
      return true;
    });
    assert.equal(fake.renewals, 1);
    assert.equal(agent.served, leaf(3).fingerprint);
    assert.equal(readFileSync(join(dir, "router.key"), "utf8"), leaf(3).key);
    assert.equal(reloads(), 1);
    // A report would keep this agent from going stale, and Custos renews only once it is.
    assert.deepEqual(
      fake.reports.map((r) => r.fingerprint),
      [leaf(3).fingerprint],
    );
  });

  test("a target not yet valid by the agent's clock is not installed", async () => {
    const agent = await agentOn({ now: () => Date.now() - DAY_MS });
    await assert.rejects(agent.round(), (e: unknown) => {
      assert.ok(e instanceof CertAgentError);
      assert.equal(e.code, "invalid_material");
      assert.match(e.message, /not valid before/);
      return true;
    });
    assert.deepEqual(readdirSync(dir), []);
    assert.equal(fake.renewals, 0);
  });

  test("a failure between the renames puts the previous key, chain and certificate back", async (t) => {
    const agent = await agentOn();
    await agent.round();
    const cert = join(dir, "router.pem");
    // Immutable, the certificate file still reads, but the last rename, over it, fails.
    if (!immutable(cert, true)) return t.skip("chattr +i needs root and a file system with the immutable flag");
    try {
      fake.target = leaf(1);
      fake.generation = 2;
      await assert.rejects(agent.round(), { code: "io_error" });
    } finally {
      immutable(cert, false);
    }
    assert.equal(readFileSync(join(dir, "router.key"), "utf8"), leaf(0).key, "the key, renamed first, is back");
    assert.equal(readFileSync(join(dir, "chain.pem"), "utf8"), pki.ca);
    assert.equal(readFileSync(cert, "utf8"), leaf(0).cert + pki.ca);
    assert.equal(statSync(join(dir, "router.key")).mode & 0o777, 0o600);
    assert.deepEqual(
      readdirSync(dir).filter((f) => f.endsWith(".tmp")),
      [],
    );
    assert.equal(reloads(), 1, "nothing reloaded");
    assert.equal(agent.served, leaf(0).fingerprint);
    // The next round fetches the whole material and writes the files again.
    assert.equal((await agent.round()).changed, true);
    assert.equal(fake.fetches.at(-1)?.has("known"), false);
    assert.equal(readFileSync(join(dir, "router.key"), "utf8"), leaf(1).key);
  });

  for (const [status, code, pattern] of [
    [403, "forbidden", /cert:agent on cert\/router/],
    [409, "conflict", /--role router does not match consumer router/],
    [404, "not_found", /no consumer router/],
  ] as const) {
    test(`a ${status} before Custos ever answered ends the run with what to fix`, async () => {
      fake.refuse = { status, code };
      const controller = new AbortController();
      await assert.rejects(runCertAgent(client, options(), log, controller.signal), (e: unknown) => {
        assert.ok(e instanceof ClientError);
        assert.equal(e.code, code);
        assert.equal(e.status, status);
        assert.match(e.message, pattern);
        return true;
      });
      assert.deepEqual(readdirSync(dir), []);
    });
  }

  test("once Custos has answered, refusals and outages are logged and retried until stopped", async () => {
    const controller = new AbortController();
    let rounds = 0;
    server.reply = (req) => {
      if (req.url.includes("/certificate")) rounds++;
      if (rounds === 2) return { status: 403, body: { error: { code: "forbidden", message: "policy changed" } } };
      if (rounds === 3) return { status: 503, body: { error: { code: "hsm_unavailable", message: "hsm down" } } };
      if (rounds === 4) return { status: 500, body: { error: { code: "internal", message: "internal error" } } };
      if (rounds >= 5) controller.abort();
      return fake.reply(req);
    };
    const result = await runCertAgent(client, options({ intervalMs: 10 }), log, controller.signal);
    assert.equal(result?.fingerprint, leaf(0).fingerprint);
    assert.ok(rounds >= 5);
    const errors = lines.filter((l) => l.startsWith("error "));
    assert.equal(errors.length, 3, lines.join("\n"));
    assert.match(errors[0] ?? "", /^error forbidden: .*policy changed/);
    assert.match(errors[1] ?? "", /^error hsm_unavailable: hsm down/);
    assert.match(errors[2] ?? "", /^error internal: /);
  });

  test("a malformed request (invalid_request) ends the run even once Custos has answered: it is not retried", async () => {
    const controller = new AbortController();
    // Only bounds a run that would not end: the test fails then anyway.
    const guard = setTimeout(() => controller.abort(), 60_000);
    server.reply = (req) =>
      req.method === "PUT"
        ? { status: 400, body: { error: { code: "invalid_request", message: "an agent id is 1-128 characters" } } }
        : fake.reply(req);
    try {
      await assert.rejects(runCertAgent(client, options({ intervalMs: 10 }), log, controller.signal), {
        code: "invalid_request",
        status: 400,
      });
    } finally {
      clearTimeout(guard);
    }
    assert.equal(fake.fetches.length, 1);
  });

  test("once something is served, a renewal the issuing policy refuses (a 400) is logged and retried, not fatal", async () => {
    const controller = new AbortController();
    // Only bounds a run that would not end: the test fails then anyway.
    const guard = setTimeout(() => controller.abort(), 60_000);
    fake.renewAt = PAST;
    let renewals = 0;
    server.reply = (req) => {
      if (req.method === "POST" && req.url.endsWith("/renew") && ++renewals <= 2) {
        const code = renewals === 1 ? "name_not_allowed" : "ttl_too_long";
        return { status: 400, body: { error: { code, message: "refused by the role" } } };
      }
      return fake.reply(req);
    };
    fake.next = leaf(1);
    const stopWhenRenewed = (level: AgentLogLevel, message: string) => {
      log(level, message);
      if (message.startsWith("renewed:")) controller.abort();
    };
    try {
      await runCertAgent(client, options({ intervalMs: 10 }), stopWhenRenewed, controller.signal);
    } finally {
      clearTimeout(guard);
    }
    const errors = lines.filter((l) => l.startsWith("error "));
    assert.match(errors[0] ?? "", /^error name_not_allowed: refused by the role/);
    assert.match(errors[1] ?? "", /^error ttl_too_long: refused by the role/);
    assert.equal(fake.renewals, 1, "the third renewal reached the fake and renewed");
    assert.equal(fake.target.fingerprint, leaf(1).fingerprint);
    assert.equal(fake.reports[0]?.fingerprint, leaf(0).fingerprint, "what is served was reported meanwhile");
  });

  test("an agent id Custos would refuse is refused before anything is sent", () => {
    for (const agentId of ["", "edge one", "-edge", "edge/a", `e${"a".repeat(128)}`]) {
      assert.throws(() => new CertAgent(client, options({ agentId }), log), RangeError, JSON.stringify(agentId));
    }
    for (const agentId of ["e", "edge-a.apps.test:443", `e${"a".repeat(127)}`]) {
      assert.doesNotThrow(() => new CertAgent(client, options({ agentId }), log), agentId);
    }
    assert.equal(server.requests.length, 0);
  });

  test("an outage before the first answer is retried, not fatal", async () => {
    const controller = new AbortController();
    let fetches = 0;
    server.reply = (req) => {
      if (req.url.includes("/certificate") && ++fetches === 1) {
        return { status: 503, body: { error: { code: "store_unavailable", message: "store down" } } };
      }
      return fake.reply(req);
    };
    const stopWhenReported = (level: AgentLogLevel, message: string) => {
      log(level, message);
      if (message.startsWith("reported")) controller.abort();
    };
    const result = await runCertAgent(client, options({ intervalMs: 10 }), stopWhenReported, controller.signal);
    assert.equal(result?.fingerprint, leaf(0).fingerprint);
    assert.equal(fetches, 2);
    assert.match(lines.find((l) => l.startsWith("error ")) ?? "", /^error store_unavailable: store down/);
  });

  test("once: one round, and its failure is thrown", async () => {
    const controller = new AbortController();
    const ok = await runCertAgent(client, options(), log, controller.signal, { once: true });
    assert.equal(ok?.fingerprint, leaf(0).fingerprint);
    assert.equal(fake.fetches.length, 1);
    fake.target = leaf(1);
    writeFileSync(join(dir, "reload.fail"), "");
    await assert.rejects(runCertAgent(client, options(), log, controller.signal, { once: true }), {
      code: "reload_failed",
    });
  });

  test("an abort during the pause ends the run at once", async () => {
    const controller = new AbortController();
    const stopWhenReported = (level: AgentLogLevel, message: string) => {
      log(level, message);
      if (message.startsWith("reported")) controller.abort();
    };
    // An hour's interval: the run can only end through the abort.
    const result = await runCertAgent(client, options({ intervalMs: 3_600_000 }), stopWhenReported, controller.signal);
    assert.equal(result?.fingerprint, leaf(0).fingerprint);
    assert.equal(fake.fetches.length, 1);
  });

  test("an abort during a hung reload kills it and puts the served files back", async () => {
    await (await agentOn()).round();
    fake.target = leaf(1);
    const pidFile = join(dir, "reload.pid");
    const controller = new AbortController();
    // An hour's timeout: only the abort can end this reload.
    const hung = options({ reloadCommand: `sleep 600 & echo $! > '${pidFile}'; wait`, reloadTimeoutMs: 3_600_000 });
    const running = runCertAgent(client, hung, log, controller.signal);
    await waitFor("the reload started", () => existsSync(pidFile) && readFileSync(pidFile, "utf8").endsWith("\n"));
    controller.abort();
    const pid = Number(readFileSync(pidFile, "utf8"));
    await waitFor("the reload's own child is gone", () => {
      try {
        // Killed and orphaned, it may linger as a zombie until init reaps it: that counts as gone.
        return /^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, "utf8"));
      } catch {
        return true;
      }
    });
    assert.equal(await running, undefined, "stopped before the round ended");
    assert.equal(readFileSync(join(dir, "router.key"), "utf8"), leaf(0).key);
    assert.equal(readFileSync(join(dir, "router.pem"), "utf8"), leaf(0).cert + pki.ca);
  });

  test("an abort in the middle of a round ends the run without an error", async () => {
    const controller = new AbortController();
    server.reply = (req) => {
      if (req.method === "PUT") controller.abort();
      return fake.reply(req);
    };
    assert.equal(await runCertAgent(client, options(), log, controller.signal), undefined);
    assert.deepEqual(
      lines.filter((l) => l.startsWith("error")),
      [],
    );
  });

  describe("with --check", () => {
    let tls: Server;
    let port: number;
    /** What the endpoint presents: the files as they are at each handshake, or a fixed leaf. */
    let presents: "files" | Leaf;
    const names: (string | undefined)[] = [];

    before(async () => {
      tls = createServer({ SNICallback: (name, done) => done(null, contextFor(name)) });
      await new Promise<void>((ok) => tls.listen(0, "127.0.0.1", ok));
      port = (tls.address() as AddressInfo).port;
    });
    after(async () => {
      await new Promise<void>((ok) => tls.close(() => ok()));
    });
    const contextFor = (name: string) => {
      names.push(name);
      if (presents === "files") {
        return createSecureContext({
          cert: readFileSync(join(dir, "router.pem")),
          key: readFileSync(join(dir, "router.key")),
        });
      }
      return createSecureContext({ cert: presents.cert, key: presents.key });
    };

    test("a change counts as served once the endpoint presents it, asked for by its first DNS name", async () => {
      presents = "files";
      names.length = 0;
      const agent = await agentOn({ check: { host: "127.0.0.1", port } });
      assert.equal((await agent.round()).fingerprint, leaf(0).fingerprint);
      assert.equal(fake.reports.at(-1)?.fingerprint, leaf(0).fingerprint);
      assert.ok(names.length >= 2, "confirmed on more than one handshake");
      assert.ok(
        names.every((n) => n === "router.test"),
        `SNI: ${names.join(",")}`,
      );
    });

    test("an endpoint that keeps presenting the old certificate fails the check and is not reported", async () => {
      presents = leaf(2);
      const agent = await agentOn({
        check: { host: "127.0.0.1", port, servername: "edge.apps.test" },
        checkTimeoutMs: 600,
      });
      await assert.rejects(agent.round(), (e: unknown) => {
        assert.ok(e instanceof CertAgentError);
        assert.equal(e.code, "check_failed");
        assert.match(e.message, new RegExp(`presents ${leaf(2).fingerprint.slice(0, 16)}`));
        return true;
      });
      assert.deepEqual(fake.reports, []);
      assert.equal(names.at(-1), "edge.apps.test");
    });

    test("restarted after a change that did not finish and without its copies, it reports what the endpoint still presents", async () => {
      presents = "files";
      await (await agentOn({ check: { host: "127.0.0.1", port } })).round();
      presents = leaf(0);
      killedDuringReload(leaf(1));
      for (const f of readdirSync(dir).filter((n) => n.endsWith(".tmp"))) rmSync(join(dir, f));
      // The default check deadline: its last round must see the endpoint present the new pair.
      const restarted = await agentOn({ check: { host: "127.0.0.1", port } });
      assert.equal(restarted.served, leaf(0).fingerprint, "the certificate the state file names, still presented");
      fake.target = leaf(1);
      fake.generation = 2;
      writeFileSync(join(dir, "reload.fail"), "");
      await assert.rejects(restarted.round(), { code: "reload_failed" });
      assert.equal(fake.reports.at(-1)?.fingerprint, leaf(0).fingerprint, "reported, holding the rotation open");
      assert.equal(fake.fetches.at(-1)?.has("known"), false, "the files are written whole");
      rmSync(join(dir, "reload.fail"));
      presents = "files";
      assert.equal((await restarted.round()).changed, true);
      assert.equal(fake.reports.at(-1)?.fingerprint, leaf(1).fingerprint);
    });

    test("at start, files the endpoint does not present are not taken as served", async () => {
      presents = "files";
      await (await agentOn({ check: { host: "127.0.0.1", port } })).round();
      presents = leaf(2);
      const restarted = await agentOn({ check: { host: "127.0.0.1", port } });
      assert.equal(restarted.served, undefined);
      presents = "files";
      const before = reloads();
      assert.equal((await restarted.round()).changed, true);
      assert.equal(reloads(), before + 1, "reloaded, since what was served was not what the files hold");
    });
  });

  test("the default SNI name is the first DNS name that is not a wildcard", () => {
    assert.equal(defaultServername(new X509Certificate(leaf(0).cert)), "router.test");
  });

  test("writeFileAtomic leaves the old file in place and no temp file when it cannot write", async () => {
    const file = join(dir, "kept.pem");
    writeFileSync(file, "old");
    await assert.rejects(writeFileAtomic(join(dir, "missing", "x.pem"), Buffer.from("new"), 0o644), {
      code: "io_error",
    });
    await writeFileAtomic(file, Buffer.from("new"), 0o600);
    assert.equal(readFileSync(file, "utf8"), "new");
    assert.deepEqual(readdirSync(dir), ["kept.pem"]);
  });

  test("a reload command past its timeout is killed with what it started", async () => {
    const pidFile = join(dir, "child.pid");
    await assert.rejects(runReload(`sleep 60 & echo $! > '${pidFile}'; wait`, 300), (e: unknown) => {
      assert.ok(e instanceof CertAgentError);
      assert.equal(e.code, "reload_failed");
      assert.match(e.message, /killed/);
      return true;
    });
    const pid = Number(readFileSync(pidFile, "utf8"));
    // Killed and orphaned, it may linger as a zombie until init reaps it: that counts as gone.
    const running = () => {
      try {
        return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, "utf8"));
      } catch {
        return false;
      }
    };
    await waitFor("the command's own child to be gone too", () => !running());
  });

  describe("custos agent cert", () => {
    const cli = async (args: string[]) => {
      const out: Buffer[] = [];
      const err: Buffer[] = [];
      const sink = (into: Buffer[]) =>
        new Writable({
          write(chunk: Buffer, _e, done) {
            into.push(Buffer.from(chunk));
            done();
          },
        });
      const ctx = new CliContext({
        stdin: Readable.from([]),
        stdout: sink(out),
        stderr: sink(err),
        env: { CUSTOS_ADDR: server.url, CUSTOS_CACERT: server.certFile, CUSTOS_TOKEN: "cst_agent_token" },
      });
      const program = new Command("custos")
        .option("--json")
        .exitOverride()
        .configureOutput({ writeOut: () => {}, writeErr: (s) => err.push(Buffer.from(s)) });
      ctx.attach(program);
      registerAgentCommands(program, ctx);
      let code: number;
      try {
        await program.parseAsync(args, { from: "user" });
        code = ctx.exitCode;
      } catch (e) {
        if (!isCommanderError(e)) err.push(Buffer.from(`${formatError(e)}\n`));
        code = exitCodeOf(e);
      } finally {
        ctx.close();
      }
      return { code, out: Buffer.concat(out).toString(), err: Buffer.concat(err).toString() };
    };
    const base = () => [
      "agent",
      "cert",
      "--name",
      "router",
      "--role",
      "router",
      "--cert",
      join(dir, "router.pem"),
      "--key",
      join(dir, "router.key"),
      "--chain",
      join(dir, "chain.pem"),
      "--reload",
      options().reloadCommand,
      "--agent-id",
      "edge-cli",
    ];

    test("--once does one round, exits 0 and logs one line per event to stderr", async () => {
      const r = await cli([...base(), "--once"]);
      assert.equal(r.code, 0, r.err);
      assert.deepEqual(fake.reports, [{ agent: "edge-cli", fingerprint: leaf(0).fingerprint }]);
      assert.match(r.out, /^fingerprint: +[0-9a-f]{64}$/m);
      for (const line of r.err.trimEnd().split("\n")) assert.match(line, /^\d{4}-\d\d-\d\dT\S+ (info|error) \S/);
      assert.doesNotMatch(r.err, /PRIVATE KEY/);
    });

    test("a wrong role ends the command with exit 1 and says which option to fix", async () => {
      fake.refuse = { status: 409, code: "conflict" };
      const r = await cli(base());
      assert.equal(r.code, 1);
      assert.match(r.err, /error: conflict: --role router does not match consumer router/);
    });

    test("a failing reload under --once exits 1", async () => {
      writeFileSync(join(dir, "reload.fail"), "");
      const r = await cli([...base(), "--once"]);
      assert.equal(r.code, 1);
      assert.match(r.err, /error: reload_failed: the reload command exited with status 3/);
      assert.deepEqual(fake.reports, []);
    });

    test("bad invocations are usage errors (64) and send nothing", async () => {
      for (const extra of [
        ["--check", "127.0.0.1"],
        ["--check", "[nothost]:443"],
        ["--interval", "30"],
        ["--servername", "router.test"],
        ["--chain", join(dir, "router.pem")],
        ["--key", join(dir, "no-such-dir", "router.key")],
        ["--agent-id", "edge one"],
      ]) {
        const r = await cli([...base(), ...extra, "--once"]);
        assert.equal(r.code, 64, `${extra.join(" ")}: ${r.err}`);
      }
      assert.equal(server.requests.length, 0);
    });
  });
});
