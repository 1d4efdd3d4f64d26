/**
 * The server's life as an operator meets it, third review: `custos server` and
 * `custos init` run as real processes against their configuration (file and
 * variables), the HSM, the store and TLS material; then shutdown by signal with
 * writes in flight, a restart, what the server logs and what health says.
 * Oracles: the README's Configuration section, openssl (certificates, s_client with
 * each protocol version), the SQLite file read directly, and the processes' own exit
 * codes and output.
 */
import assert from "node:assert/strict";
import { type ChildProcess, execFileSync, spawn, spawnSync } from "node:child_process";
import { X509Certificate } from "node:crypto";
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
import { request as httpRequest } from "node:http";
import { Agent, request as httpsRequest } from "node:https";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after, before, describe, test } from "node:test";
import Database from "better-sqlite3";
import { type CustosInstance, errorCode, type HttpAnswer, httpsJson, ok, startCustos } from "../helpers/custos.js";
import { freePort } from "../helpers/ports.js";
import { createTestToken } from "../helpers/softhsm.js";
import { waitFor } from "../helpers/wait.js";

const BIN = resolve(import.meta.dirname, "../../bin/custos.js");

type Json = Record<string, unknown>;

/** A `custos` process of our own: its output so far, and how it ended. */
interface Launched {
  readonly proc: ChildProcess;
  /** stdout and stderr, interleaved as they arrived. */
  out: string;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** The address it printed when it began serving, or null when it ended first. */
  readonly served: Promise<string | null>;
}

const running = new Set<ChildProcess>();
/** Where spawned processes run: never the checkout (a relative path would land in it). */
const scratch = mkdtempSync(join(tmpdir(), "custos-srv3-cwd-"));

function launch(env: NodeJS.ProcessEnv, args: string[] = ["server"]): Launched {
  const proc = spawn(process.execPath, [BIN, ...args], { env, cwd: scratch, stdio: ["ignore", "pipe", "pipe"] });
  running.add(proc);
  let markServed: (address: string | null) => void = () => {};
  const served = new Promise<string | null>((ok) => {
    markServed = ok;
  });
  const launched: Launched = {
    proc,
    out: "",
    exited: new Promise((ok) =>
      proc.once("exit", (code, signal) => {
        running.delete(proc);
        markServed(null);
        ok({ code, signal });
      }),
    ),
    served,
  };
  const take = (chunk: Buffer): void => {
    launched.out += chunk.toString("utf8");
    const m = /custos: serving on (\S+)/.exec(launched.out);
    if (m?.[1]) markServed(m[1]);
  };
  proc.stdout?.on("data", take);
  proc.stderr?.on("data", take);
  return launched;
}

/** Runs `custos server` (or `args`) to its end; one that begins serving is stopped with SIGTERM. */
async function attempt(
  env: NodeJS.ProcessEnv,
  args: string[] = ["server"],
): Promise<{ status: number | null; out: string; served: string | null }> {
  const l = launch(env, args);
  const served = await l.served;
  if (served !== null) l.proc.kill("SIGTERM");
  const { code } = await l.exited;
  return { status: code, out: l.out, served };
}

/** The lines of `out` that are not the server's JSON log. */
function plainLines(out: string): string[] {
  return out.split("\n").filter((line) => line !== "" && !line.startsWith("{"));
}

/** A refusal as an operator should see it: one `error:` line, no stack trace. */
function assertCleanRefusal(out: string, what: string): void {
  assert.doesNotMatch(out, /^\s+at /m, `${what}: no stack trace\n${out}`);
  assert.doesNotMatch(out, /error: internal:/, `${what}: not an internal error\n${out}`);
  assert.equal(plainLines(out).filter((l) => l.startsWith("error:")).length, 1, `${what}: one error line\n${out}`);
}

function openssl(args: string[], input = ""): { status: number | null; out: string } {
  const r = spawnSync("openssl", args, { input, encoding: "utf8", timeout: 30_000 });
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

/** openssl s_client against 127.0.0.1:port with `extra` options; what it printed. */
function sClient(port: number, extra: string[]): { status: number | null; out: string } {
  return openssl(["s_client", "-connect", `127.0.0.1:${port}`, "-servername", "localhost", ...extra], "Q\n");
}

/** The SHA-256 fingerprint of the first certificate in a PEM text. */
function fingerprint(pem: string): string {
  return new X509Certificate(pem).fingerprint256;
}

/** A plain HTTP GET; its status and body, or the error's code when no HTTP answer came. */
function httpGet(port: number, path: string): Promise<{ status: number; text: string } | { error: string }> {
  return new Promise((ok) => {
    const req = httpRequest({ host: "127.0.0.1", port, path, method: "GET", agent: false, timeout: 10_000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => ok({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString("utf8") }));
    });
    req.on("timeout", () => req.destroy(Object.assign(new Error("timeout"), { code: "ETIMEDOUT" })));
    req.on("error", (e: NodeJS.ErrnoException) => ok({ error: e.code ?? e.message }));
    req.end();
  });
}

/** Whether something accepts TCP connections on 127.0.0.1:port. */
function accepts(port: number): Promise<boolean> {
  return new Promise((ok) => {
    const s = connect({ host: "127.0.0.1", port });
    s.once("connect", () => {
      s.destroy();
      ok(true);
    });
    s.once("error", () => ok(false));
  });
}

after(() => {
  for (const proc of running) proc.kill("SIGKILL");
  rmSync(scratch, { recursive: true, force: true });
});

describe("configuration, start-up refusals, init and TLS material", () => {
  let custos: CustosInstance;
  let files: string;
  /** The environment `custos server` runs with: the instance's, on a port of its own. */
  let base: NodeJS.ProcessEnv;

  before(async () => {
    custos = await startCustos();
    await custos.stop();
    files = mkdtempSync(join(tmpdir(), "custos-srv3-files-"));
    base = { ...custos.env };
  });
  after(async () => {
    await custos?.dispose();
    rmSync(files, { recursive: true, force: true });
  });

  const configFile = (name: string, content: unknown): string => {
    const path = join(files, name);
    writeFileSync(path, typeof content === "string" ? content : JSON.stringify(content));
    return path;
  };

  test("an unknown setting, a wrong type, a file that is not JSON or not there: exit 64, one line naming it", async () => {
    const cases: Array<[string, string[], NodeJS.ProcessEnv, RegExp]> = [
      ["unknown key", ["--config", configFile("unknown.json", { hsm: { tokenLable: "x" } })], {}, /"hsm\.tokenLable"/],
      ["a string port", ["--config", configFile("port.json", { listen: { port: "8443" } })], {}, /"listen\.port"/],
      ["a section as a number", ["--config", configFile("section.json", { tls: 5 })], {}, /"tls"/],
      [
        "a port out of range",
        ["--config", configFile("range.json", { listen: { port: 70_000 } })],
        { CUSTOS_LISTEN: "" },
        /"listen\.port" must be an integer in 0\.\.65535/,
      ],
      ["CUSTOS_LISTEN's port out of range", [], { CUSTOS_LISTEN: "127.0.0.1:70000" }, /"listen\.port"/],
      ["a pool too large", ["--config", configFile("pool.json", { hsm: { poolSize: 65 } })], {}, /hsm\.poolSize/],
      ["not JSON", ["--config", configFile("broken.json", "{ listen: ")], {}, /broken\.json is not valid JSON/],
      ["--config missing", ["--config", join(files, "absent.json")], {}, /absent\.json not found/],
      ["CUSTOS_CONFIG missing", [], { CUSTOS_CONFIG: join(files, "gone.json") }, /gone\.json not found/],
    ];
    for (const [what, args, env, names] of cases) {
      const r = await attempt({ ...base, ...env }, ["server", ...args]);
      assert.equal(r.served, null, `${what}: refused before serving`);
      assert.equal(r.status, 64, `${what}: ${r.out}`);
      assert.match(r.out, names, what);
      assertCleanRefusal(r.out, what);
    }
    // `custos init` reads the same configuration and refuses it the same way.
    const init = await attempt(base, ["init", "--config", join(files, "unknown.json")]);
    assert.equal(init.status, 64, init.out);
    assert.match(init.out, /unknown setting "hsm\.tokenLable"/);
  });

  test("null for a setting that has no null (a path, the token label, the PIN variable, a name): refused, exit 64, naming it", async () => {
    const cases: Array<[string, Json]> = [
      ["tls.dir", { tls: { dir: null } }],
      ["hsm.modulePath", { hsm: { modulePath: null } }],
      ["hsm.tokenLabel", { hsm: { tokenLabel: null } }],
      ["hsm.pinEnv", { hsm: { pinEnv: null } }],
      ["store.path", { store: { path: null } }],
      ["broker.trustDomain", { broker: { trustDomain: null } }],
      ["ssh.knownHostsPattern", { ssh: { knownHostsPattern: null } }],
    ];
    const problems: string[] = [];
    for (const [setting, content] of cases) {
      const r = await attempt(base, ["server", "--config", configFile(`null-${setting}.json`, content)]);
      if (r.served !== null) problems.push(`${setting}: null accepted, the server served on ${r.served}`);
      else if (r.status !== 64 || !r.out.includes(setting))
        problems.push(`${setting}: exit ${r.status}, ${plainLines(r.out).join(" / ")}`);
    }
    // A null store path opened "null.lock" in the working directory.
    for (const name of readdirSync(scratch)) problems.push(`${name} was written into the working directory`);
    assert.deepEqual(problems, []);
  });

  test("a number or object where a path or the JWT issuer goes (settings whose default is null): refused naming it", async () => {
    const cases: Array<[string, Json]> = [
      ["tls.certFile", { tls: { certFile: 5, keyFile: join(files, "none.pem") } }],
      ["tls.keyFile", { tls: { certFile: join(custos.dir, "tls/server.pem"), keyFile: 6 } }],
      ["broker.jwtIssuer", { broker: { jwtIssuer: 5 } }],
      ["hsm.pinFile", { hsm: { pinFile: { path: "x" } } }],
    ];
    const problems: string[] = [];
    for (const [setting, content] of cases) {
      const r = await attempt(base, ["server", "--config", configFile(`type-${setting}.json`, content)]);
      if (r.served !== null) problems.push(`${setting}: accepted, the server served on ${r.served}`);
      else if (r.status !== 64 || !r.out.includes(setting))
        problems.push(`${setting}: exit ${r.status}, ${plainLines(r.out).join(" / ")}`);
    }
    assert.deepEqual(problems, []);
  });

  test("which source wins: --config over CUSTOS_CONFIG, the file over the defaults, variables over the file; dataDir in a file is ignored", async () => {
    const [filePort, envPort] = [await freePort(), await freePort()];
    const { CUSTOS_LISTEN: _unset, ...noListen } = base;
    const good = configFile("good.json", {
      listen: { port: filePort },
      hsm: { tokenLabel: "no-such-token-label" },
      dataDir: join(files, "elsewhere"),
    });
    const bad = configFile("bad.json", { nonsense: true });

    // The file's port, the variable's token label (the file's would find no token).
    const fromFile = await attempt({ ...noListen, CUSTOS_CONFIG: bad }, ["server", "--config", good]);
    assert.equal(fromFile.served, `https://127.0.0.1:${filePort}`, fromFile.out);
    assert.equal(fromFile.status, 0, fromFile.out);
    assert.equal(existsSync(join(files, "elsewhere")), false, "the file's dataDir was not used");

    const fromEnv = await attempt({ ...noListen, CUSTOS_CONFIG: good, CUSTOS_LISTEN: `127.0.0.1:${envPort}` });
    assert.equal(fromEnv.served, `https://127.0.0.1:${envPort}`, fromEnv.out);

    // The data directory's custos.json is read when nothing names a file.
    writeFileSync(join(custos.dir, "custos.json"), JSON.stringify({ listen: { port: filePort } }));
    try {
      const fromDataDir = await attempt(noListen);
      assert.equal(fromDataDir.served, `https://127.0.0.1:${filePort}`, fromDataDir.out);
      // No file and no variable: the documented default.
      rmSync(join(custos.dir, "custos.json"));
      const { CUSTOS_HSM_TOKEN: _t, ...noToken } = noListen;
      const defaults = await attempt(noToken);
      assert.equal(defaults.served, null);
      assert.match(defaults.out, /custos-dev|CKR_TOKEN_NOT_PRESENT|hsm_unavailable/, defaults.out);
    } finally {
      writeFileSync(join(custos.dir, "custos.json"), "{}");
    }
  });

  test("CUSTOS_LOG_LEVEL outside pino's levels is a usage error naming the variable", async () => {
    const r = await attempt({ ...base, CUSTOS_LOG_LEVEL: "loud" });
    assert.equal(r.served, null);
    assert.equal(r.status, 64, r.out);
    assert.match(r.out, /CUSTOS_LOG_LEVEL/);
    assertCleanRefusal(r.out, "CUSTOS_LOG_LEVEL=loud");
  });

  test("no PIN anywhere: the error names the PIN file and the variable and exits non-zero; an empty CUSTOS_HSM_PIN falls back to the file", async () => {
    const missing = join(files, "no-pin-here");
    const r = await attempt({ ...base, CUSTOS_HSM_PIN_FILE: missing });
    assert.equal(r.served, null);
    assert.notEqual(r.status, 0, r.out);
    assert.match(r.out, new RegExp(`no HSM PIN: create ${missing.replaceAll("/", "\\/")} or set CUSTOS_HSM_PIN`));
    assertCleanRefusal(r.out, "missing PIN file");
    // hsm.pinEnv names the variable; the error names it too.
    const renamed = await attempt({ ...base, CUSTOS_HSM_PIN_FILE: missing }, [
      "server",
      "--config",
      configFile("pinenv.json", { hsm: { pinEnv: "MY_VAULT_PIN" } }),
    ]);
    assert.match(renamed.out, /or set MY_VAULT_PIN/);
    const fromRenamed = await attempt({ ...base, CUSTOS_HSM_PIN_FILE: missing, MY_VAULT_PIN: custos.token.pin }, [
      "server",
      "--config",
      join(files, "pinenv.json"),
    ]);
    assert.notEqual(fromRenamed.served, null, `the PIN from hsm.pinEnv's variable: ${fromRenamed.out}`);
    const empty = await attempt({ ...base, CUSTOS_HSM_PIN: "" });
    assert.notEqual(empty.served, null, `an empty variable is no PIN; the file is read: ${empty.out}`);
    // One final newline is dropped, a second is part of the PIN.
    const lf = configFile("pin-lf", `${custos.token.pin}\n`);
    const withLf = await attempt({ ...base, CUSTOS_HSM_PIN_FILE: lf });
    assert.notEqual(withLf.served, null, withLf.out);
    const twoLf = configFile("pin-lflf", `${custos.token.pin}\n\n`);
    const withTwo = await attempt({ ...base, CUSTOS_HSM_PIN_FILE: twoLf });
    assert.equal(withTwo.served, null);
    assert.match(withTwo.out, /CKR_PIN_INCORRECT/);
  });

  test("a PIN file that can't be read (a directory) is named in the error, as hsm.pinFile, not an internal error", async () => {
    const dir = join(files, "pin-is-a-directory");
    mkdirSync(dir, { recursive: true });
    const r = await attempt({ ...base, CUSTOS_HSM_PIN_FILE: dir });
    assert.equal(r.served, null);
    assert.notEqual(r.status, 0);
    assert.ok(r.out.includes(dir) || r.out.includes("hsm.pinFile"), r.out);
    assertCleanRefusal(r.out, "unreadable PIN file");
  });

  test("a PIN on the command line is refused (64) and never echoed back", async () => {
    const pin = custos.token.pin;
    for (const args of [
      ["server", "--pin", pin],
      ["server", `--pin=${pin}`],
      ["server", `--hsm-pin=${pin}`],
      ["init", `--pin=${pin}`],
      ["server", pin],
    ]) {
      const r = await attempt(base, args);
      assert.equal(r.served, null, args.join(" "));
      assert.equal(r.status, 64, `${args[1]}: ${r.out}`);
      assert.ok(!r.out.includes(pin), `the PIN is not echoed for ${args.join(" ").replace(pin, "<pin>")}`);
    }
  });

  test("a wrong PIN: hsm_unavailable naming CKR_PIN_INCORRECT, and neither PIN in the output", async () => {
    const wrong = "wrong-pin-0123456789";
    const r = await attempt({ ...base, CUSTOS_HSM_PIN: wrong });
    assert.equal(r.served, null);
    assert.equal(r.status, 2, r.out);
    assert.match(r.out, /CKR_PIN_INCORRECT/);
    assert.ok(!r.out.includes(wrong), "the wrong PIN is not shown");
    assert.ok(!r.out.includes(custos.token.pin), "the right PIN is not shown");
    assertCleanRefusal(r.out, "wrong PIN");
  });

  test("the wrong HSM token: an empty token, another Custos's token, a store not initialised: each refused, naming why", async () => {
    const other = createTestToken("custos-srv3-other");
    const otherDir = mkdtempSync(join(tmpdir(), "custos-srv3-other-"));
    try {
      // An initialised token that holds no Custos root key.
      const empty = await attempt({ ...base, CUSTOS_HSM_TOKEN: other.label, CUSTOS_HSM_PIN: other.pin });
      assert.equal(empty.served, null);
      assert.equal(empty.status, 2, empty.out);
      assert.match(empty.out, /root_key_mismatch: the HSM token holds no Custos root key; is this the right token\?/);
      assertCleanRefusal(empty.out, "empty token");

      // A second Custos on that token: its root key has another check value.
      const init = await attempt(
        {
          ...base,
          CUSTOS_DATA_DIR: join(otherDir, "data"),
          CUSTOS_HSM_TOKEN: other.label,
          CUSTOS_HSM_PIN: other.pin,
          CUSTOS_HSM_PIN_FILE: "",
        },
        ["init"],
      );
      assert.equal(init.status, 0, init.out);
      const ours = custos.query<{ value: string }>("SELECT value FROM settings WHERE name = 'hsm.rootKey.checkValue'");
      // The data directory init made, and the files in it, as README.md describes them.
      const mode = (path: string) => statSync(join(otherDir, "data", path)).mode & 0o777;
      assert.deepEqual(
        [mode("."), mode("admin.token"), mode("tls/ca.pem"), mode("custos.db")],
        [0o700, 0o600, 0o644, 0o600],
      );
      const db = new Database(join(otherDir, "data", "custos.db"), { readonly: true });
      const theirs = db.prepare("SELECT value FROM settings WHERE name = 'hsm.rootKey.checkValue'").get() as {
        value: string;
      };
      db.close();
      assert.notEqual(ours[0]?.value, theirs.value);
      const foreign = await attempt({ ...base, CUSTOS_HSM_TOKEN: other.label, CUSTOS_HSM_PIN: other.pin });
      assert.equal(foreign.served, null);
      assert.equal(foreign.status, 2, foreign.out);
      assert.match(foreign.out, /root_key_mismatch/);
      assert.ok(foreign.out.includes(theirs.value) && foreign.out.includes(String(ours[0]?.value)), foreign.out);

      // A store no init made, on a token that has Custos keys: not_initialized, and nothing is created.
      const fresh = mkdtempSync(join(tmpdir(), "custos-srv3-fresh-"));
      try {
        const r = await attempt({ ...base, CUSTOS_DATA_DIR: fresh });
        assert.equal(r.served, null);
        assert.notEqual(r.status, 0);
        assert.match(r.out, /not_initialized: Custos is not initialised: run `custos init` first/);
        assert.equal(existsSync(join(fresh, "admin.token")), false, "the server made no admin");
      } finally {
        rmSync(fresh, { recursive: true, force: true });
      }
    } finally {
      rmSync(otherDir, { recursive: true, force: true });
      other.remove();
    }
  });

  test("a token label or module that isn't there: the error (and the log) names what was looked for", async () => {
    const label = "custos-no-such-label";
    const r = await attempt({ ...base, CUSTOS_HSM_TOKEN: label });
    assert.equal(r.served, null);
    assert.equal(r.status, 2, r.out);
    assert.match(plainLines(r.out).join("\n"), new RegExp(`error: hsm_unavailable: .*${label}`));
    assert.doesNotMatch(r.out, /"token":"\[REDACTED\]"/, "a token label is no secret");
    const module = join(files, "no-such-pkcs11.so");
    const m = await attempt({ ...base, CUSTOS_HSM_MODULE: module });
    assert.equal(m.served, null);
    assert.match(
      plainLines(m.out).join("\n"),
      new RegExp(`error: hsm_unavailable: .*${module.replaceAll(".", "\\.")}`),
    );
  });

  test("init run again, with another --admin, while the server runs: no second admin, the root key, token file and audit head unchanged", async () => {
    const token = readFileSync(join(custos.dir, "admin.token"));
    const settings = custos.query<{ name: string; value: string }>("SELECT name, value FROM settings ORDER BY name");
    await custos.start();
    try {
      const before = custos.query<{ n: number }>("SELECT count(*) AS n FROM users")[0]?.n;
      const again = await attempt(base, ["init", "--admin", "second-admin", "--json"]);
      assert.equal(again.status, 0, again.out);
      assert.match(again.out, /"created":\s*false/);
      assert.deepEqual(readFileSync(join(custos.dir, "admin.token")), token, "admin.token is the first admin's");
      assert.deepEqual(
        custos.query("SELECT name, value FROM settings ORDER BY name"),
        settings,
        "the root key and audit keys recorded are the first",
      );
      assert.equal(custos.query<{ n: number }>("SELECT count(*) AS n FROM users")[0]?.n, before);
      assert.equal(custos.query("SELECT 1 FROM users WHERE name = 'second-admin'").length, 0);
      // The server that ran beside it still writes a whole chain.
      ok(await custos.call("POST", "/v1/keys", { name: "after-second-init", purpose: "encrypt" }), 201);
      const verify = custos.cli(["audit", "verify"]);
      assert.equal(verify.status, 0, verify.stdout + verify.stderr);
    } finally {
      await custos.stop();
    }
    // Against the wrong token it refuses and writes nothing.
    const other = createTestToken("custos-srv3-init");
    try {
      const wrong = await attempt({ ...base, CUSTOS_HSM_TOKEN: other.label, CUSTOS_HSM_PIN: other.pin }, ["init"]);
      assert.notEqual(wrong.status, 0, wrong.out);
      assert.match(wrong.out, /root_key_mismatch/);
      assert.deepEqual(readFileSync(join(custos.dir, "admin.token")), token);
    } finally {
      other.remove();
    }
  });

  describe("the admin's own certificate and key", () => {
    let pki: string;
    before(() => {
      pki = join(files, "own-pki");
      mkdirSync(pki);
      const ssl = (...args: string[]) => execFileSync("openssl", args, { cwd: pki, stdio: "pipe" });
      const ec = (name: string) =>
        ssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", name);
      ec("root.key");
      ec("int.key");
      ec("leaf.key");
      ec("other.key");
      ssl("req", "-x509", "-new", "-key", "root.key", "-subj", "/CN=Own Root", "-days", "30", "-out", "root.pem");
      writeFileSync(join(pki, "ca.ext"), "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n");
      writeFileSync(
        join(pki, "leaf.ext"),
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
      );
      ssl("req", "-new", "-key", "int.key", "-subj", "/CN=Own Intermediate", "-out", "int.csr");
      ssl(
        "x509",
        "-req",
        "-in",
        "int.csr",
        "-CA",
        "root.pem",
        "-CAkey",
        "root.key",
        "-CAcreateserial",
        "-days",
        "30",
        "-extfile",
        "ca.ext",
        "-out",
        "int.pem",
      );
      ssl("req", "-new", "-key", "leaf.key", "-subj", "/CN=127.0.0.1", "-out", "leaf.csr");
      ssl(
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "int.pem",
        "-CAkey",
        "int.key",
        "-CAcreateserial",
        "-days",
        "30",
        "-extfile",
        "leaf.ext",
        "-out",
        "leaf.pem",
      );
      writeFileSync(
        join(pki, "fullchain.pem"),
        readFileSync(join(pki, "leaf.pem"), "utf8") + readFileSync(join(pki, "int.pem"), "utf8"),
      );
    });

    test("a certificate file with its chain is served as it is, verified by a client trusting only the root; Custos issues none", async () => {
      const issuedBefore = custos.query<{ n: number }>(
        "SELECT count(*) AS n FROM pki_certificates WHERE role = 'custos-server'",
      )[0]?.n;
      const serverPem = readFileSync(join(custos.dir, "tls/server.pem"), "utf8");
      const l = launch({
        ...base,
        CUSTOS_TLS_CERT: join(pki, "fullchain.pem"),
        CUSTOS_TLS_KEY: join(pki, "leaf.key"),
      });
      try {
        assert.notEqual(await l.served, null, l.out);
        const s = sClient(custos.port, ["-showcerts", "-CAfile", join(pki, "root.pem"), "-verify_return_error"]);
        assert.match(s.out, /Verify return code: 0 \(ok\)/, s.out);
        const served = [...s.out.matchAll(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g)].map((m) =>
          fingerprint(m[0]),
        );
        assert.deepEqual(served, [
          fingerprint(readFileSync(join(pki, "leaf.pem"), "utf8")),
          fingerprint(readFileSync(join(pki, "int.pem"), "utf8")),
        ]);
        const health = await httpsJson({
          port: custos.port,
          ca: readFileSync(join(pki, "root.pem"), "utf8"),
          method: "GET",
          path: "/v1/health",
        });
        assert.equal(health.status, 200, health.text);
      } finally {
        l.proc.kill("SIGTERM");
        await l.exited;
      }
      assert.equal(readFileSync(join(custos.dir, "tls/server.pem"), "utf8"), serverPem, "its own server.pem untouched");
      assert.equal(
        custos.query<{ n: number }>("SELECT count(*) AS n FROM pki_certificates WHERE role = 'custos-server'")[0]?.n,
        issuedBefore,
      );
    });

    test("a missing certificate file is named; only one of the pair is a usage error naming both settings", async () => {
      const gone = join(pki, "gone.pem");
      const r = await attempt({ ...base, CUSTOS_TLS_CERT: gone, CUSTOS_TLS_KEY: join(pki, "leaf.key") });
      assert.equal(r.served, null);
      assert.notEqual(r.status, 0);
      assert.ok(r.out.includes(gone), r.out);
      assertCleanRefusal(r.out, "missing certificate file");
      const half = await attempt({ ...base, CUSTOS_TLS_CERT: join(pki, "leaf.pem") });
      assert.equal(half.status, 64, half.out);
      assert.match(half.out, /"tls\.certFile" and "tls\.keyFile" go together/);
    });

    test("a key that is not the certificate's: refused before serving, naming the settings, not an internal error", async () => {
      const r = await attempt({
        ...base,
        CUSTOS_TLS_CERT: join(pki, "fullchain.pem"),
        CUSTOS_TLS_KEY: join(pki, "other.key"),
      });
      assert.equal(r.served, null);
      assert.notEqual(r.status, 0);
      assert.match(r.out, /tls\.keyFile|CUSTOS_TLS_KEY/);
      assertCleanRefusal(r.out, "mismatched key");
    });

    test("an expired certificate is not served silently: refused, or at least a warning that it expired", async () => {
      // A leaf whose validity ended in 2020, from the same intermediate (openssl ca sets past dates).
      const ssl = (...args: string[]) => execFileSync("openssl", args, { cwd: pki, stdio: "pipe" });
      mkdirSync(join(pki, "ca-db"));
      writeFileSync(join(pki, "ca-db/index.txt"), "");
      writeFileSync(join(pki, "ca-db/serial"), "1000\n");
      writeFileSync(
        join(pki, "ca.cnf"),
        [
          "[ca]",
          "default_ca = own",
          "[own]",
          `dir = ${join(pki, "ca-db")}`,
          "database = $dir/index.txt",
          "serial = $dir/serial",
          "new_certs_dir = $dir",
          "default_md = sha256",
          "policy = any",
          "copy_extensions = none",
          "[any]",
          "commonName = supplied",
          "[leaf]",
          "basicConstraints=critical,CA:FALSE",
          "subjectAltName=IP:127.0.0.1",
          "",
        ].join("\n"),
      );
      ssl(
        "ca",
        "-batch",
        "-config",
        "ca.cnf",
        "-cert",
        "int.pem",
        "-keyfile",
        "int.key",
        "-in",
        "leaf.csr",
        "-startdate",
        "20200101000000Z",
        "-enddate",
        "20200201000000Z",
        "-extensions",
        "leaf",
        "-out",
        "expired.pem",
      );
      assert.ok(new X509Certificate(readFileSync(join(pki, "expired.pem"))).validTo.includes("2020"));
      const r = await attempt({
        ...base,
        CUSTOS_TLS_CERT: join(pki, "expired.pem"),
        CUSTOS_TLS_KEY: join(pki, "leaf.key"),
      });
      assert.match(r.out, /expired/i, `the operator is told: ${r.out}`);
    });
  });

  test("plain HTTP only with CUSTOS_INSECURE_HTTP=1 (which logs a warning); any other value keeps TLS", async () => {
    const tlsServer = launch({ ...base, CUSTOS_INSECURE_HTTP: "true" });
    try {
      assert.equal(await tlsServer.served, `https://127.0.0.1:${custos.port}`, tlsServer.out);
      const plain = await httpGet(custos.port, "/v1/health");
      assert.ok(!("status" in plain) || plain.status === 400, `no plain HTTP answer: ${JSON.stringify(plain)}`);
      assert.equal(ok(await custos.call("GET", "/v1/health", undefined, null)).status, "ok");
    } finally {
      tlsServer.proc.kill("SIGTERM");
      await tlsServer.exited;
    }
    const http = launch({ ...base, CUSTOS_INSECURE_HTTP: "1" });
    try {
      assert.equal(await http.served, `http://127.0.0.1:${custos.port}`, http.out);
      const health = await httpGet(custos.port, "/v1/health");
      assert.ok("status" in health, JSON.stringify(health));
      assert.equal(health.status, 200);
      assert.equal((JSON.parse(health.text) as Json).status, "ok");
      const warning = http.out
        .split("\n")
        .filter((l) => l.startsWith("{"))
        .map((l) => JSON.parse(l) as Json)
        .find((l) => /plain HTTP/.test(String(l.msg)));
      assert.equal(warning?.level, 40, "a warn-level line says it serves plain HTTP");
    } finally {
      http.proc.kill("SIGTERM");
      await http.exited;
    }
  });
});

describe("a running server: protocol versions, logs, health, shutdown by signal, restart", () => {
  let custos: CustosInstance;
  /** The request id of the health check answered while audit records could not be written. */
  let unaudited = "";
  before(async () => {
    custos = await startCustos();
  });
  after(async () => {
    await custos?.dispose();
  });

  test("TLS 1.2 and 1.3 are served (1.2 with ECDHE and AEAD only); TLS 1.1 and a CBC suite are refused", () => {
    const tls12 = sClient(custos.port, ["-tls1_2"]);
    assert.match(tls12.out, /Protocol\s*: TLSv1\.2/, tls12.out);
    assert.match(tls12.out, /Cipher is ECDHE-(ECDSA|RSA)-(AES(128|256)-GCM-SHA(256|384)|CHACHA20-POLY1305)/);
    const tls13 = sClient(custos.port, ["-tls1_3"]);
    assert.match(tls13.out, /New, TLSv1\.3, Cipher is TLS_/, tls13.out);
    // The client must be allowed to offer 1.1 at all (OpenSSL 3's default security level forbids it).
    const tls11 = sClient(custos.port, ["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"]);
    assert.notEqual(tls11.status, 0);
    assert.match(tls11.out, /alert protocol version/, tls11.out);
    assert.match(tls11.out, /Cipher is \(NONE\)/);
    const cbc = sClient(custos.port, ["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA"]);
    assert.notEqual(cbc.status, 0);
    assert.match(cbc.out, /Cipher is \(NONE\)/, cbc.out);
  });

  test("the log: JSON lines, no token, PIN or plaintext; a 503's request id is in the log; health is 503 while audit can't write", async () => {
    const marker = "log-review-plaintext-7f3a9c";
    const forged = "cst_aaaaaaaaaaaaaaaa_ForgedTokenValueThatMustNotBeLogged0123456789";
    ok(await custos.call("POST", "/v1/keys", { name: "log-review", purpose: "encrypt" }), 201);
    ok(await custos.call("POST", "/v1/keys/log-review/encrypt", { plaintext: Buffer.from(marker).toString("base64") }));
    assert.equal((await custos.call("GET", "/v1/keys", undefined, forged)).status, 401);

    // Another process holds SQLite's write lock: audit records can't be written.
    const lock = new Database(join(custos.dir, "custos.db"));
    lock.exec("BEGIN IMMEDIATE");
    let health: HttpAnswer;
    try {
      health = await custos.call("GET", "/v1/health", undefined, null);
    } finally {
      lock.exec("ROLLBACK");
      lock.close();
    }
    assert.equal(health.status, 503, health.text);
    assert.equal(errorCode(health), "audit_unavailable");
    const id = /\(request ([0-9a-f-]{36})\)$/.exec(
      String((health.body as { error: { message: string } }).error.message),
    )?.[1];
    assert.ok(id, health.text);
    assert.equal(ok(await custos.call("GET", "/v1/health", undefined, null)).status, "ok", "healthy again");

    // The server's JSON log is written asynchronously: a line may reach the file after the answer.
    await waitFor("the failed request's log line", () => readFileSync(custos.logFile, "utf8").includes(id));
    const log = readFileSync(custos.logFile, "utf8");
    const entries = log
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l) as Json);
    assert.ok(entries.length > 0);
    for (const e of entries) {
      assert.equal(typeof e.level, "number");
      assert.equal(typeof e.time, "number");
      assert.equal(typeof e.msg, "string");
    }
    // Everything else the server wrote is its one-line notes.
    for (const line of plainLines(log)) assert.match(line, /^custos: /, `an unstructured line: ${line}`);
    assert.ok(
      entries.some((e) => e.reqId === id && Number(e.level) >= 40),
      `the failed request ${id} is in the log under its id`,
    );
    unaudited = id;
    for (const [what, secret] of [
      ["the admin token", custos.adminToken],
      // cst_<16-character id>_<43 base64url characters>, which may themselves hold a "_".
      ["the admin token's secret part", custos.adminToken.slice("cst_".length + 16 + 1)],
      ["a refused token", forged],
      ["the HSM PIN", custos.token.pin],
      ["a plaintext", marker],
      ["a plaintext in base64", Buffer.from(marker).toString("base64")],
    ] as const) {
      assert.ok(secret.length >= 8 && !log.includes(secret), `${what} is not in the log`);
    }
  });

  test("a request whose audit record can't be written is tried once more as a failure, then answered: not four times", () => {
    assert.ok(unaudited, "the test above ran");
    const failures = readFileSync(custos.logFile, "utf8")
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l) as Json)
      .filter((e) => e.reqId === unaudited && /^could not audit/.test(String(e.msg)));
    // The success's record failed; the failure's record is the one more try, logged once.
    assert.deepEqual(
      failures.map((e) => e.msg),
      ["could not audit a failed request"],
    );
  });

  test("SIGTERM with writes in flight: exit 0; every acknowledged key is in the database, nothing unacknowledged is; the port is closed; a checkpoint covers the last record", async () => {
    await custos.stop();
    const l = launch(custos.env);
    assert.equal(await l.served, custos.url, l.out);
    const acknowledged = new Set<string>();
    const outcomes = new Map<string, number>();
    let signalled = false;
    let stop = false;
    const worker = async (w: number): Promise<void> => {
      for (let i = 0; !stop; i++) {
        const name = `inflight-${w}-${i}`;
        try {
          const r = await custos.call("POST", "/v1/keys", { name, purpose: "encrypt" });
          if (r.status === 201) acknowledged.add(name);
          else {
            assert.equal(r.status, 503, r.text);
            assert.equal(errorCode(r), "shutting_down", r.text);
            outcomes.set("shutting_down", (outcomes.get("shutting_down") ?? 0) + 1);
          }
        } catch (e) {
          const code = (e as NodeJS.ErrnoException).code ?? String(e);
          outcomes.set(code, (outcomes.get(code) ?? 0) + 1);
          if (signalled) return;
          throw e;
        }
      }
    };
    const workers = Array.from({ length: 12 }, (_, w) => worker(w));
    while (acknowledged.size < 60) await new Promise((r) => setTimeout(r, 10));
    signalled = true;
    l.proc.kill("SIGTERM");
    const exit = await l.exited;
    stop = true;
    await Promise.all(workers);
    assert.deepEqual(exit, { code: 0, signal: null }, l.out);
    assert.match(l.out, /custos: SIGTERM, shutting down/);
    assert.equal(await accepts(custos.port), false, "nothing listens after the exit");
    // Refused at the door, or reset in the listen backlog before node took the connection;
    // a request cut off after its write would show below, as a key nobody was told of.
    for (const code of outcomes.keys()) {
      assert.match(code, /^(ECONNREFUSED|ECONNRESET|EPIPE|shutting_down)$/, JSON.stringify([...outcomes]));
    }

    const stored = new Set(
      custos.query<{ name: string }>("SELECT name FROM keys WHERE name LIKE 'inflight-%'").map((r) => r.name),
    );
    assert.deepEqual(
      [...acknowledged].filter((n) => !stored.has(n)),
      [],
      "every 201 is in the database",
    );
    assert.deepEqual(
      [...stored].filter((n) => !acknowledged.has(n)),
      [],
      "no key was made whose answer was lost",
    );
    const head = custos.query<{ seq: number }>("SELECT max(seq) AS seq FROM audit_log")[0]?.seq;
    const signed = custos.query<{ seq: number }>("SELECT max(seq) AS seq FROM audit_checkpoints")[0]?.seq;
    assert.equal(signed, head, "the shutdown checkpoint covers the last record");
  });

  test("SIGINT with an idle keep-alive connection open: the server still exits 0; CUSTOS_LOG_LEVEL=warn keeps info lines out", async () => {
    const l = launch({ ...custos.env, CUSTOS_LOG_LEVEL: "warn" });
    assert.equal(await l.served, custos.url, l.out);
    const agent = new Agent({ keepAlive: true, ca: custos.ca });
    try {
      const status = await new Promise<number>((ok, fail) => {
        const req = httpsRequest({ host: "127.0.0.1", port: custos.port, path: "/v1/health", agent }, (res) => {
          res.resume();
          res.on("end", () => ok(res.statusCode ?? 0));
        });
        req.on("error", fail);
        req.end();
      });
      assert.equal(status, 200);
      l.proc.kill("SIGINT");
      const exit = await l.exited;
      assert.deepEqual(exit, { code: 0, signal: null }, l.out);
    } finally {
      agent.destroy();
    }
    assert.match(l.out, /custos: SIGINT, shutting down/);
    const infos = l.out.split("\n").filter((line) => line.startsWith("{") && (JSON.parse(line) as Json).level === 30);
    assert.deepEqual(infos, [], "no info lines at level warn");
  });

  test("a restart reuses everything: the same certificate, key and CA files, no new server certificate, the old ciphertext decrypts", async () => {
    const tls = (name: string) => readFileSync(join(custos.dir, "tls", name));
    const [cert, key, ca] = [tls("server.pem"), tls("server.key"), tls("ca.pem")];
    const issued = () =>
      custos.query<{ n: number }>("SELECT count(*) AS n FROM pki_certificates WHERE role = 'custos-server'")[0]?.n;
    const count = issued();
    await custos.start();
    const { ciphertext } = ok(
      await custos.call("POST", "/v1/keys/log-review/encrypt", { plaintext: Buffer.from("kept").toString("base64") }),
    ) as { ciphertext: string };
    await custos.stop();
    await custos.start();
    assert.deepEqual([tls("server.pem"), tls("server.key"), tls("ca.pem")], [cert, key, ca]);
    assert.equal(statSync(join(custos.dir, "tls/server.key")).mode & 0o777, 0o600, "server.key is 0600");
    assert.equal(issued(), count);
    const served = sClient(custos.port, []);
    const pem = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/.exec(served.out)?.[0] ?? "";
    assert.equal(fingerprint(pem), fingerprint(cert.toString("utf8")), "the served certificate is server.pem");
    const back = ok(await custos.call("POST", "/v1/keys/log-review/decrypt", { ciphertext })) as { plaintext: string };
    assert.equal(Buffer.from(back.plaintext, "base64").toString(), "kept");
    const verify = custos.cli(["audit", "verify"]);
    assert.equal(verify.status, 0, verify.stdout + verify.stderr);
  });
});
