/**
 * The acceptance test of certificate rotation: a real Custos, two real nginx
 * instances terminating TLS, an agent beside each, and clients hitting both
 * throughout a rotation and a rollback. No client may fail, and each must see
 * exactly the certificate the consumer's status promises.
 */
import assert from "node:assert/strict";
import { type ChildProcess, execFileSync, spawn, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { request } from "node:https";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after, before, describe, test } from "node:test";
import type { TLSSocket } from "node:tls";
import { type CliResult, type CustosInstance, startCustos } from "../helpers/custos.js";
import { freePort } from "../helpers/ports.js";

const ROOT = resolve(import.meta.dirname, "../..");
type Json = Record<string, unknown>;

const nginxMissing = spawnSync("nginx", ["-v"]).error !== undefined;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Polls `check` until it returns a value, or fails with `what` and the last state seen. */
async function waitFor<T>(
  what: string,
  check: () => T | undefined | Promise<T | undefined>,
  detail: () => string = () => "",
  seconds = 120,
) {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`gave up waiting for ${what}\n${detail()}`);
    await sleep(300);
  }
}

/** A child process whose exit can be awaited and whose stderr is kept. */
interface Child {
  readonly process: ChildProcess;
  readonly exited: Promise<number | null>;
  stderr(): string;
  stop(): Promise<number | null>;
}

function track(child: ChildProcess): Child {
  let err = "";
  child.stderr?.on("data", (c: Buffer) => {
    err += c.toString("utf8");
  });
  const exited = new Promise<number | null>((ok) => {
    child.once("exit", (code) => ok(code));
  });
  return {
    process: child,
    exited,
    stderr: () => err,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 15_000);
      try {
        return await exited;
      } finally {
        clearTimeout(timer);
      }
    },
  };
}

/** An nginx with its own prefix, config, pid and logs, terminating TLS on a loopback port. */
interface Nginx {
  readonly dir: string;
  readonly port: number;
  readonly cert: string;
  readonly key: string;
  readonly chain: string;
  readonly reload: string;
  readonly child: Child;
}

/** Starts nginx under `dir`; `started` gets its process at once, so a failed start is still cleaned up. */
async function startNginx(dir: string, started: (child: Child) => void): Promise<Nginx> {
  const port = await freePort();
  mkdirSync(join(dir, "tls"), { recursive: true });
  const cert = join(dir, "tls", "router.pem");
  const key = join(dir, "tls", "router.key");
  const chain = join(dir, "tls", "chain.pem");
  // Deployed with a placeholder, as a router is before its agent first runs.
  execFileSync(
    "openssl",
    ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"].concat([
      "-keyout",
      key,
      "-out",
      cert,
      "-days",
      "1",
      "-subj",
      "/CN=placeholder",
    ]),
    { stdio: "ignore" },
  );
  writeFileSync(chain, readFileSync(cert));
  const conf = join(dir, "nginx.conf");
  const log = join(dir, "error.log");
  writeFileSync(
    conf,
    `${process.getuid?.() === 0 ? "user root;\n" : ""}worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${log} notice;
events { worker_connections 512; }
http {
  access_log off;
  client_body_temp_path ${dir}/tmp-body;
  proxy_temp_path ${dir}/tmp-proxy;
  fastcgi_temp_path ${dir}/tmp-fastcgi;
  uwsgi_temp_path ${dir}/tmp-uwsgi;
  scgi_temp_path ${dir}/tmp-scgi;
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
  const base = `nginx -p '${dir}' -c '${conf}' -e '${log}'`;
  const child = track(
    spawn("nginx", ["-p", dir, "-c", conf, "-e", log, "-g", "daemon off;"], { stdio: ["ignore", "ignore", "pipe"] }),
  );
  started(child);
  await waitFor(`nginx on port ${port}`, async () => {
    if (child.process.exitCode !== null) {
      throw new Error(`nginx exited: ${child.stderr()}${existsSync(log) ? readFileSync(log, "utf8") : ""}`);
    }
    return existsSync(join(dir, "nginx.pid")) ? true : undefined;
  });
  return { dir, port, cert, key, chain, reload: `${base} -s reload`, child };
}

/** One client request on a fresh TLS connection, trusting only the root. */
interface Hit {
  readonly port: number;
  /** The test's phase when the request began, and when its handshake completed. */
  readonly started: string;
  readonly handshake: string | undefined;
  readonly fingerprint: string | undefined;
  readonly error: string | undefined;
}

describe("certificate rotation across two nginx endpoints", { skip: nginxMissing && "nginx is not installed" }, () => {
  let custos: CustosInstance;
  let work: string;
  let caFile: string;
  let entry: string[];
  let agentToken: string;
  /** Agents, and the nginx processes, stopped in `after` whatever happened. */
  const children: Child[] = [];
  const servers: Child[] = [];
  const nginxes: Nginx[] = [];

  const env = (token: string): NodeJS.ProcessEnv => ({
    ...custos.env,
    CUSTOS_ADDR: custos.url,
    CUSTOS_CACERT: caFile,
    CUSTOS_TOKEN: token,
    CUSTOS_TOKEN_FILE: "",
  });
  /** Runs the CLI as an operator would; asynchronously, so the client loops keep going meanwhile. */
  const cli = async (args: string[], token = custos.adminToken): Promise<CliResult> => {
    const child = spawn(process.execPath, [...entry, ...args], {
      cwd: ROOT,
      env: env(token),
      stdio: ["ignore", "pipe", "pipe"],
      timeout: 60_000,
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on("data", (c: Buffer) => out.push(c));
    child.stderr.on("data", (c: Buffer) => err.push(c));
    const code = await new Promise<number | null>((ok) => child.once("close", (c) => ok(c)));
    const stdoutBytes = Buffer.concat(out);
    return {
      status: code ?? -1,
      stdout: stdoutBytes.toString("utf8"),
      stdoutBytes,
      stderr: Buffer.concat(err).toString("utf8"),
    };
  };
  const ok = async (args: string[]): Promise<CliResult> => {
    const r = await cli(args);
    assert.equal(r.status, 0, `custos ${args.join(" ")}: ${r.stderr}`);
    return r;
  };
  const status = async (consumer: string): Promise<Json> => {
    const answer = JSON.parse((await ok(["cert", "rotation", "status", consumer, "--json"])).stdout) as {
      consumer: Json;
    };
    return answer.consumer;
  };
  const agent = (args: string[], token = agentToken): Child => {
    const child = track(
      spawn(process.execPath, [...entry, "agent", "cert", ...args], {
        cwd: ROOT,
        env: env(token),
        stdio: ["ignore", "ignore", "pipe"],
      }),
    );
    children.push(child);
    return child;
  };
  const agentFor = (nginx: Nginx, id: string, extra: string[] = []): Child =>
    agent([
      ...["--name", "router", "--role", "router", "--agent-id", id],
      ...["--cert", nginx.cert, "--key", nginx.key, "--chain", nginx.chain],
      ...["--reload", nginx.reload, "--interval", "1s", "--check", `127.0.0.1:${nginx.port}`],
      ...extra,
    ]);
  const tokenFor = async (policy: string, rules: { resource: string; actions: string[] }[]) => {
    const p = await custos.call("PUT", `/v1/policies/${policy}`, { rules });
    assert.equal(p.status, 200, p.text);
    const t = await custos.call("POST", "/v1/auth/tokens", { name: policy, policies: [policy] });
    assert.equal(t.status, 201, t.text);
    return (t.body as { token: string }).token;
  };
  /** The consumer once every listed agent serves generation `generation` and no rotation is open. */
  const converged = (consumer: string, generation: number, agents: string[]) => {
    let last: Json = {};
    return waitFor(
      `${consumer} to converge on generation ${generation}`,
      async () => {
        const c = await status(consumer);
        last = c;
        const target = c.target as Json;
        const rotation = c.rotation as Json | null;
        const serving = (c.agents as Json[]).filter((a) => a.serves === "target" && a.stale === false).map((a) => a.id);
        const done =
          c.state === "converged" &&
          target.generation === generation &&
          (rotation === null || rotation.completedAt !== null) &&
          agents.every((id) => serving.includes(id));
        return done ? c : undefined;
      },
      () => `last status: ${JSON.stringify(last)}\nagents' logs:\n${children.map((c) => c.stderr()).join("\n")}`,
    );
  };

  before(async () => {
    custos = await startCustos();
    work = mkdtempSync(join(tmpdir(), "custos-cert-rotation-"));
    caFile = join(work, "ca.pem");
    writeFileSync(caFile, custos.ca);
    entry = [join(ROOT, "bin/custos.js")];
    const role = await custos.call("PUT", "/v1/pki/roles/router", {
      dnsNames: ["router.test", "*.apps.test"],
      allowWildcardNames: true,
    });
    assert.equal(role.status, 200, role.text);
    agentToken = await tokenFor("router-agent", [{ resource: "cert/router", actions: ["cert:agent"] }]);
  });
  after(async () => {
    // Agents first, so none reloads an nginx that is going away.
    await Promise.all(children.map((c) => c.stop()));
    await Promise.all(servers.map((c) => c.stop()));
    await custos?.dispose();
    if (work) rmSync(work, { recursive: true, force: true });
  });

  test("consumer create issues generation 1 for the role's names", async () => {
    const created = await ok(
      ["cert", "consumer", "create", "router", "--role", "router"].concat([
        "--dns",
        "router.test",
        "--dns",
        "*.apps.test",
      ]),
    );
    assert.match(created.stdout, /^consumer: +router$/m);
    assert.match(created.stdout, /^target: +generation 1, fingerprint [0-9a-f]{16}, notAfter /m);
    assert.match(created.stdout, /^agents: +none reported$/m);
    const list = (await ok(["cert", "consumer", "list"])).stdout;
    assert.match(list, /^name +role +dnsNames +state +target +previous +agents$/m);
    assert.match(list, /^router +router +router\.test, \*\.apps\.test +converged +1 +- +0\/0 on target$/m);
  });

  test("rotate and roll back under continuous traffic: no failed request, each phase sees its certificate", async (t) => {
    for (const name of ["edge-a", "edge-b"]) {
      const dir = join(work, name);
      mkdirSync(dir);
      nginxes.push(await startNginx(dir, (child) => servers.push(child)));
    }
    const [a, b] = nginxes as [Nginx, Nginx];
    agentFor(a, "edge-a");
    agentFor(b, "edge-b");
    const first = await converged("router", 1, ["edge-a", "edge-b"]);
    const fp1 = (first.target as Json).fingerprint as string;

    let phase = "before";
    let running = true;
    const hits: Hit[] = [];
    const hit = (port: number) =>
      new Promise<Hit>((done) => {
        const started = phase;
        let handshake: string | undefined;
        let fingerprint: string | undefined;
        const finish = (error: string | undefined) => done({ port, started, handshake, fingerprint, error });
        const req = request(
          {
            host: "127.0.0.1",
            port,
            path: "/",
            servername: "router.test",
            ca: custos.ca,
            agent: false,
            timeout: 10_000,
          },
          (res) => {
            res.resume();
            res.on("end", () => finish(res.statusCode === 200 ? undefined : `HTTP ${res.statusCode}`));
            res.on("error", (e) => finish(e.message));
          },
        );
        req.on("socket", (socket) => {
          socket.once("secureConnect", () => {
            handshake = phase;
            const raw = (socket as TLSSocket).getPeerCertificate().raw;
            fingerprint = createHash("sha256").update(raw).digest("hex");
          });
        });
        req.on("timeout", () => req.destroy(new Error("no answer within 10 s")));
        req.on("error", (e) => finish(e.message));
        req.end();
      });
    const loop = async (port: number) => {
      while (running) {
        hits.push(await hit(port));
        await sleep(5);
      }
    };
    const loops = [loop(a.port), loop(b.port)];
    const count = (p: string) => hits.filter((h) => h.started === p && h.port === a.port).length;
    const inPhase = (p: string) =>
      waitFor(`requests in phase ${p}`, () =>
        nginxes.every((n) => hits.filter((h) => h.started === p && h.port === n.port).length >= 25) ? true : undefined,
      );

    try {
      await inPhase("before");
      phase = "rotating";
      const rotated = await ok(["cert", "rotate", "router"]);
      assert.match(rotated.stdout, /^state: +rotating$/m);
      assert.match(rotated.stdout, /^rotation: +rotate 1 -> 2, started \S+, not completed$/m);
      const second = await converged("router", 2, ["edge-a", "edge-b"]);
      const fp2 = (second.target as Json).fingerprint as string;
      assert.notEqual(fp2, fp1);
      assert.equal((second.previous as Json).fingerprint, fp1);
      phase = "rotated";
      await inPhase("rotated");

      phase = "rolling back";
      const back = await ok(["cert", "rotation", "rollback", "router"]);
      assert.match(back.stdout, /^rotation: +rollback 2 -> 1, started \S+, not completed$/m);
      const third = await converged("router", 1, ["edge-a", "edge-b"]);
      assert.equal((third.target as Json).fingerprint, fp1);
      assert.equal(third.previous, null);
      phase = "rolled back";
      await inPhase("rolled back");
      running = false;
      await Promise.all(loops);

      const failures = hits.filter((h) => h.error !== undefined);
      const seen = (p: string, at: "started" | "handshake") =>
        [...new Set(hits.filter((h) => h[at] === p).map((h) => h.fingerprint?.slice(0, 16)))].join(",");
      t.diagnostic(
        `${hits.length} requests (${count("before")}, ${count("rotating")}, ${count("rotated")}, ` +
          `${count("rolling back")}, ${count("rolled back")} per phase on edge-a), ${failures.length} failed; ` +
          `fingerprints: before ${seen("before", "handshake")}, rotating ${seen("rotating", "started")}, ` +
          `rotated ${seen("rotated", "started")}, rolling back ${seen("rolling back", "started")}, ` +
          `rolled back ${seen("rolled back", "started")} (old ${fp1.slice(0, 16)}, new ${fp2.slice(0, 16)})`,
      );
      assert.deepEqual(failures, [], "no request failed");
      // A handshake done before `rotate` was even sent cannot have met generation 2.
      for (const h of hits.filter((x) => x.handshake === "before")) assert.equal(h.fingerprint, fp1);
      // Once the status says converged, every endpoint presents the target.
      for (const h of hits.filter((x) => x.started === "rotated")) assert.equal(h.fingerprint, fp2);
      for (const h of hits.filter((x) => x.started === "rolled back")) assert.equal(h.fingerprint, fp1);
      for (const h of hits) assert.ok(h.fingerprint === fp1 || h.fingerprint === fp2, "only Custos's certificates");

      const human = (await ok(["cert", "rotation", "status", "router"])).stdout;
      assert.match(human, /^state: +converged$/m);
      assert.match(human, new RegExp(`^target: +generation 1, fingerprint ${fp1.slice(0, 16)}, notAfter \\S+$`, "m"));
      assert.match(human, /^previous: +-$/m);
      assert.match(human, /^rotation: +rollback 2 -> 1, started \S+, completed \S+$/m);
      assert.match(human, /^ +id +serves +fingerprint +reported +stale$/m);
      for (const id of ["edge-a", "edge-b"]) {
        assert.match(human, new RegExp(`^ +${id} +target +${fp1.slice(0, 16)} +\\S+ +no$`, "m"));
      }
    } finally {
      running = false;
      await Promise.all(loops);
    }
  });

  test("the key files are mode 0600, the certificate files hold leaf then chain", () => {
    assert.equal(nginxes.length, 2);
    for (const n of nginxes) {
      assert.equal(statSync(n.key).mode & 0o777, 0o600);
      const pem = readFileSync(n.cert, "utf8");
      const chain = readFileSync(n.chain, "utf8");
      assert.ok(pem.endsWith(chain) && pem.length > chain.length, "leaf followed by the chain");
    }
  });

  test("an agent with the wrong --role ends with exit 1 and says so", async () => {
    const dir = join(work, "wrong-role");
    mkdirSync(dir);
    const child = agent([
      ...["--name", "router", "--role", "web", "--agent-id", "edge-wrong"],
      ...["--cert", join(dir, "c.pem"), "--key", join(dir, "k.pem"), "--chain", join(dir, "ch.pem")],
      ...["--reload", "true", "--interval", "1s"],
    ]);
    assert.equal(await child.exited, 1, child.stderr());
    assert.match(child.stderr(), /^error: conflict: --role web does not match consumer router: .*role router/m);
    assert.equal(existsSync(join(dir, "k.pem")), false);
  });

  test("a token without cert:agent on the consumer is refused (403), though it may read it", async () => {
    const reader = await tokenFor("router-reader", [{ resource: "cert/router", actions: ["cert:read"] }]);
    const fetch = await custos.call("GET", "/v1/pki/consumers/router/certificate?role=router", undefined, reader);
    assert.equal(fetch.status, 403, fetch.text);
    assert.equal((fetch.body as { error: { code: string } }).error.code, "forbidden");
    const report = await custos.call(
      "PUT",
      "/v1/pki/consumers/router/agents/x",
      { fingerprint: "0".repeat(64) },
      reader,
    );
    assert.equal(report.status, 403, report.text);
    assert.equal((await cli(["cert", "consumer", "show", "router"], reader)).status, 0);

    const dir = join(work, "reader");
    mkdirSync(dir);
    const child = agent(
      [
        ...["--name", "router", "--role", "router", "--agent-id", "edge-reader"],
        ...["--cert", join(dir, "c.pem"), "--key", join(dir, "k.pem"), "--chain", join(dir, "ch.pem")],
        ...["--reload", "true", "--interval", "1s"],
      ],
      reader,
    );
    assert.equal(await child.exited, 1, child.stderr());
    assert.match(child.stderr(), /^error: forbidden: .*needs cert:agent on cert\/router/m);
  });

  test("a failing reload is not reported as served; the agent retries until it succeeds", async () => {
    await ok(["cert", "consumer", "create", "router-b", "--role", "router", "--dns", "router.test"]);
    const token = await tokenFor("router-b-agent", [{ resource: "cert/router-b", actions: ["cert:agent"] }]);
    const dir = join(work, "failing-reload");
    mkdirSync(dir);
    const key = join(dir, "k.pem");
    const files = ["--cert", join(dir, "c.pem"), "--key", key, "--chain", join(dir, "ch.pem")];
    const reload = ["--reload", `test -e '${dir}/reload-ok' || { echo 'reload refused' >&2; exit 7; }`];
    const id = ["--name", "router-b", "--role", "router", "--agent-id", "edge-broken"];

    const once = agent([...id, ...files, ...reload, "--once"], token);
    assert.equal(await once.exited, 1, once.stderr());
    assert.match(once.stderr(), /^error: reload_failed: the reload command exited with status 7: reload refused$/m);
    assert.deepEqual((await status("router-b")).agents, [], "--once did not report");

    const child = agent([...id, ...files, ...reload, "--interval", "1s"], token);
    await waitFor(
      "two failed reloads",
      () => ((child.stderr().match(/ error reload_failed: /g) ?? []).length >= 2 ? true : undefined),
      () => child.stderr(),
    );
    assert.deepEqual((await status("router-b")).agents, [], "a failed reload is never reported");
    assert.equal(statSync(key).mode & 0o777, 0o600, "the key was written, 0600");

    writeFileSync(join(dir, "reload-ok"), "");
    const c = await converged("router-b", 1, ["edge-broken"]);
    assert.equal(((c.agents as Json[])[0] as Json).fingerprint, (c.target as Json).fingerprint);
    assert.equal(await child.stop(), 0, `SIGTERM ends the agent cleanly: ${child.stderr()}`);
    assert.match(child.stderr(), / info SIGTERM: stopping$/m);
  });
});
