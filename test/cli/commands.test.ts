import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { PassThrough } from "node:stream";
import { after, before, beforeEach, describe, test } from "node:test";
import { EXIT_CLIENT, EXIT_OK, EXIT_SERVER, EXIT_USAGE } from "../../src/cli/errors.js";
import { run } from "../../src/cli/index.js";
import { envFor, type Recorded, runCli, startServer, type TestServer } from "./harness.js";

const TOKEN = "cst_super_secret_token_do_not_print";

/** A stand-in for the KMS data plane: "ciphertexts" that carry their plaintext and context. */
function toyKms(req: Recorded) {
  const body = req.body ? (JSON.parse(req.body) as Record<string, unknown>) : {};
  if (req.url.endsWith("/encrypt")) {
    return { body: { ciphertext: `toy:${String(body.plaintext)}:${JSON.stringify(body.context ?? {})}`, version: 1 } };
  }
  if (req.url.endsWith("/decrypt")) {
    const [, plaintext, context] = /^toy:([^:]*):(.*)$/.exec(String(body.ciphertext)) ?? [];
    if (context !== JSON.stringify(body.context ?? {})) {
      return { status: 400, body: { error: { code: "decryption_failed", message: "decryption failed" } } };
    }
    return { body: { plaintext, version: 1 } };
  }
  return { body: {} };
}

describe("custos commands against a real TLS server", () => {
  let server: TestServer;
  let env: NodeJS.ProcessEnv;
  const cli = (args: string[], stdin?: string | Buffer) => runCli(args, env, stdin);
  const last = (): Recorded => {
    const r = server.requests.at(-1);
    assert.ok(r, "a request was sent");
    return r;
  };
  const lastBody = (): unknown => JSON.parse(last().body);

  before(async () => {
    server = await startServer();
    env = envFor(server, TOKEN);
  });
  after(async () => {
    await server?.close();
  });
  beforeEach(() => {
    server.reply = toyKms;
  });

  test("encrypt | decrypt round-trips arbitrary bytes through stdin and stdout", async () => {
    const bytes = Buffer.from([0, 1, 2, 0xff, 0xfe, 0x0a, 0x80]);
    const enc = await cli(["encrypt", "--key", "k", "--context", "app=a", "--context", "x=y=z"], bytes);
    assert.equal(enc.code, EXIT_OK, enc.err);
    assert.deepEqual(lastBody(), { plaintext: bytes.toString("base64"), context: { app: "a", x: "y=z" } });
    assert.equal(last().url, "/v1/keys/k/encrypt");
    assert.match(enc.out, /^toy:.*\n$/);

    const dec = await cli(["decrypt", "--key", "k", "--context", "app=a", "--context", "x=y=z"], enc.stdout);
    assert.equal(dec.code, EXIT_OK, dec.err);
    assert.deepEqual(dec.stdout, bytes);
  });

  test("decrypt with the wrong context prints the error, nothing on stdout, exit 1", async () => {
    const enc = await cli(["encrypt", "--key", "k", "--context", "app=a"], "hi");
    const dec = await cli(["decrypt", "--key", "k", "--context", "app=b"], enc.stdout);
    assert.equal(dec.code, EXIT_CLIENT);
    assert.equal(dec.err, "error: decryption_failed: decryption failed\n");
    assert.equal(dec.out, "");
  });

  test("--in and --out use files; plaintext output files are created 0600", async () => {
    const input = join(server.dir, "plain.bin");
    const sealed = join(server.dir, "sealed.txt");
    const opened = join(server.dir, "opened.bin");
    writeFileSync(input, "file contents");
    assert.equal((await cli(["encrypt", "--key", "k", "--in", input, "--out", sealed])).code, EXIT_OK);
    const dec = await cli(["decrypt", "--key", "k", "--in", sealed, "--out", opened]);
    assert.equal(dec.code, EXIT_OK, dec.err);
    assert.equal(dec.out, "");
    assert.equal(readFileSync(opened, "utf8"), "file contents");
    assert.equal(statSync(opened).mode & 0o777, 0o600);
  });

  test("decrypt takes the ciphertext as an argument, but not together with --in", async () => {
    const enc = await cli(["encrypt", "--key", "k"], "arg");
    const ok = await cli(["decrypt", "--key", "k", enc.out.trim()]);
    assert.equal(ok.out, "arg");
    const both = await cli(["decrypt", "--key", "k", "--in", "f", enc.out.trim()]);
    assert.equal(both.code, EXIT_USAGE);
    const none = await cli(["decrypt", "--key", "k"], " \n");
    assert.equal(none.code, EXIT_USAGE);
    assert.match(none.err, /no ciphertext/);
  });

  test("a malformed --context or a repeated key is a usage error and sends nothing", async () => {
    const before = server.requests.length;
    const missing = await cli(["encrypt", "--key", "k", "--context", "novalue"], "x");
    assert.equal(missing.code, EXIT_USAGE);
    assert.match(missing.err, /expected key=value/);
    const twice = await cli(["encrypt", "--key", "k", "--context", "a=1", "--context", "a=2"], "x");
    assert.equal(twice.code, EXIT_USAGE);
    assert.match(twice.err, /given twice/);
    assert.equal(server.requests.length, before);
  });

  test("--json prints the raw answer", async () => {
    server.reply = () => ({ body: { ciphertext: "c", version: 3 } });
    const r = await cli(["encrypt", "--key", "k", "--json"], "x");
    assert.deepEqual(JSON.parse(r.out), { ciphertext: "c", version: 3 });
  });

  test("datakey asks for plaintext unless --no-plaintext, with the context and size", async () => {
    server.reply = () => ({ body: { plaintext: "cGs=", ciphertext: "dk", version: 1 } });
    const r = await cli(["datakey", "--key", "k", "--context", "b=photos", "--bytes", "16"]);
    assert.equal(r.code, EXIT_OK, r.err);
    assert.deepEqual(lastBody(), { bytes: 16, plaintext: true, context: { b: "photos" } });
    assert.match(r.out, /^ciphertext: dk$/m);
    assert.match(r.out, /^plaintext: {2}cGs=$/m);
    await cli(["datakey", "--key", "k", "--no-plaintext"]);
    assert.deepEqual(lastBody(), { bytes: 32, plaintext: false });
  });

  test("verify prints valid (exit 0) or invalid (exit 1)", async () => {
    server.reply = (req) => ({ body: { valid: (JSON.parse(req.body) as { signature: string }).signature === "good" } });
    const ok = await cli(["verify", "--key", "s", "--signature", "good"], "msg");
    assert.deepEqual([ok.code, ok.out], [EXIT_OK, "valid\n"]);
    assert.deepEqual(lastBody(), { message: Buffer.from("msg").toString("base64"), signature: "good" });
    const bad = await cli(["verify", "--key", "s", "--signature", "bad"], "msg");
    assert.deepEqual([bad.code, bad.out], [EXIT_CLIENT, "invalid\n"]);
    const badJson = await cli(["verify", "--key", "s", "--signature", "bad", "--json"], "msg");
    assert.equal(badJson.code, EXIT_CLIENT);
    assert.deepEqual(JSON.parse(badJson.out), { valid: false });
  });

  test("sign prints the signature; random prints base64 or hex", async () => {
    server.reply = () => ({ body: { signature: "c2ln", version: 1, scheme: "ecdsa-p256-sha256" } });
    assert.equal((await cli(["sign", "--key", "s"], "m")).out, "c2ln\n");
    server.reply = () => ({ body: { random: Buffer.from([0xde, 0xad]).toString("base64") } });
    assert.equal((await cli(["random", "--bytes", "2", "--hex"])).out, "dead\n");
    assert.deepEqual(lastBody(), { bytes: 2 });
    assert.equal((await cli(["random"])).out, "3q0=\n");
    assert.deepEqual(lastBody(), { bytes: 32 });
  });

  test("key create, update and destroy map their options onto the API", async () => {
    server.reply = () => ({ status: 201, body: { name: "k", purpose: "sign", versions: [{ version: 1 }] } });
    const created = await cli([
      "key",
      "create",
      "k",
      "--purpose",
      "sign",
      "--algorithm",
      "ed25519",
      "--rotation-period",
      "30d",
    ]);
    assert.equal(created.code, EXIT_OK, created.err);
    assert.deepEqual(lastBody(), {
      name: "k",
      purpose: "sign",
      algorithm: "ed25519",
      rotationPeriodSeconds: 2_592_000,
    });
    assert.match(created.out, /^purpose: sign$/m);
    assert.match(created.out, /versions:\n {2}version\n {2}1\n/);

    assert.equal((await cli(["key", "create", "k", "--purpose", "hmac"])).code, EXIT_USAGE);

    await cli(["key", "update", "k", "--no-rotation", "--description", "d"]);
    assert.equal(last().method, "PATCH");
    assert.deepEqual(lastBody(), { description: "d", rotationPeriodSeconds: null });
    await cli(["key", "update", "k", "--min-decryption-version", "2"]);
    assert.deepEqual(lastBody(), { minDecryptionVersion: 2 });
    const before = server.requests.length;
    assert.equal((await cli(["key", "update", "k"])).code, EXIT_USAGE);
    assert.equal((await cli(["key", "update", "k", "--no-rotation", "--rotation-period", "1d"])).code, EXIT_USAGE);
    assert.equal(server.requests.length, before);

    await cli(["key", "disable", "k"]);
    assert.deepEqual([last().method, lastBody()], ["PATCH", { enabled: false }]);
    await cli(["key", "destroy", "k", "--waiting", "7d"]);
    assert.deepEqual([last().method, last().url], ["DELETE", "/v1/keys/k?waitingSeconds=604800"]);
    await cli(["key", "destroy", "k", "--now"]);
    assert.equal(last().url, "/v1/keys/k?immediate=true");
    assert.equal((await cli(["key", "destroy", "k", "--now", "--waiting", "1d"])).code, EXIT_USAGE);
    assert.equal((await cli(["key", "destroy", "k", "--waiting", "7"])).code, EXIT_USAGE);
    await cli(["key", "cancel-destruction", "a/b"]);
    assert.deepEqual([last().method, last().url], ["POST", "/v1/keys/a%2Fb/cancel-destruction"]);
  });

  test("key list prints a table and passes the filters", async () => {
    server.reply = () => ({
      body: {
        keys: [
          { id: "1", name: "app-a", purpose: "encrypt", state: "enabled", latestVersion: 3 },
          { id: "2", name: "signer", purpose: "sign", state: "disabled", latestVersion: 1 },
        ],
      },
    });
    const r = await cli(["key", "list", "--prefix", "app", "--limit", "10"]);
    assert.equal(last().url, "/v1/keys?prefix=app&limit=10");
    assert.equal(
      r.out,
      "name    purpose  state     latestVersion\napp-a   encrypt  enabled   3\nsigner  sign     disabled  1\n",
    );
  });

  test("an empty list prints no rows on stdout and says so on stderr; --json keeps the empty array", async () => {
    server.reply = () => ({ body: { keys: [] } });
    const r = await cli(["key", "list"]);
    assert.deepEqual([r.code, r.out, r.err], [0, "", "no results\n"]);
    const json = await cli(["--json", "key", "list"]);
    assert.deepEqual([JSON.parse(json.out), json.err], [{ keys: [] }, ""]);
  });

  test("an error answer prints error: code: message and exits 1; 5xx exits 2; the token never shows", async () => {
    server.reply = () => ({ status: 404, body: { error: { code: "not_found", message: 'key "nope" not found' } } });
    const missing = await cli(["key", "show", "nope"]);
    assert.equal(missing.code, EXIT_CLIENT);
    assert.equal(missing.err, 'error: not_found: key "nope" not found\n');
    server.reply = () => ({ status: 500, body: { error: { code: "internal", message: "request req-9 failed" } } });
    const broken = await cli(["key", "show", "x"]);
    assert.equal(broken.code, EXIT_SERVER);
    for (const r of [missing, broken]) assert.ok(!(r.out + r.err).includes(TOKEN));
    assert.equal(last().headers.authorization, `Bearer ${TOKEN}`);
  });

  test("an unknown command or option is a usage error (64)", async () => {
    assert.equal((await cli(["frobnicate"])).code, EXIT_USAGE);
    assert.equal((await cli(["key", "list", "--bogus"])).code, EXIT_USAGE);
    assert.equal((await cli(["key", "show"])).code, EXIT_USAGE);
    assert.equal((await cli(["key", "show", "a", "b"])).code, EXIT_USAGE);
    const help = await cli(["key", "--help"]);
    assert.equal(help.code, EXIT_OK);
    assert.match(help.out, /cancel-destruction/);
    // `help <topic>` names an unknown topic, at the top and inside a group.
    for (const args of [
      ["help", "frobnicate"],
      ["key", "help", "frobnicate"],
    ]) {
      const unknown = await cli(args);
      assert.equal(unknown.code, EXIT_USAGE);
      assert.match(unknown.err, /^error: unknown command 'frobnicate'/);
    }
    assert.match((await cli(["key", "help", "rotate"])).out, /Usage: custos key rotate/);
  });

  test("unusable client settings exit 64 naming the setting; no token exits 1; nothing is sent", async () => {
    const before = server.requests.length;
    const plain = await runCli(["key", "list"], { ...env, CUSTOS_ADDR: "http://127.0.0.1:8443" });
    assert.equal(plain.code, EXIT_USAGE);
    assert.match(plain.err, /^error: invalid_config: invalid address "http:\/\/127\.0\.0\.1:8443": only https:\/\//);
    const noCa = await runCli(["key", "list"], { ...env, CUSTOS_CACERT: join(server.dir, "missing.pem") });
    assert.equal(noCa.code, EXIT_USAGE);
    assert.match(noCa.err, /^error: invalid_config: cannot read CUSTOS_CACERT .*ENOENT/);
    const noToken = await runCli(["key", "list"], { ...env, CUSTOS_TOKEN: "" });
    assert.equal(noToken.code, EXIT_CLIENT);
    assert.match(noToken.err, /^error: unauthenticated: no token/);
    assert.equal(server.requests.length, before);
  });

  test("login sends the piped password and writes the token to a 0600 file, never to the terminal", async () => {
    server.reply = () => ({ body: { token: "cst_fresh_session", tokenId: "t1", expiresAt: "2030-01-01T00:00:00Z" } });
    const file = join(server.dir, "session.token");
    writeFileSync(file, "old", { mode: 0o644 });
    const r = await cli(["login", "alice", "--password-stdin", "--token-file", file], "pa ss\n");
    assert.equal(r.code, EXIT_OK, r.err);
    assert.deepEqual(lastBody(), { username: "alice", password: "pa ss" });
    assert.equal(last().headers.authorization, undefined, "login goes without a bearer token");
    assert.equal(readFileSync(file, "utf8"), "cst_fresh_session\n");
    assert.equal(statSync(file).mode & 0o777, 0o600);
    assert.ok(!(r.out + r.err).includes("cst_fresh_session"));
    assert.match(r.out, /logged in as alice/);

    const json = await cli(["login", "alice", "--password-stdin", "--json"], "pw");
    assert.equal(JSON.parse(json.out).token, "cst_fresh_session");
  });

  test("login without a place for the token, or without a terminal, refuses before sending", async () => {
    const before = server.requests.length;
    const nowhere = await runCli(["login", "alice", "--password-stdin"], { ...env, CUSTOS_TOKEN_FILE: "" }, "pw");
    assert.equal(nowhere.code, EXIT_USAGE);
    assert.match(nowhere.err, /--token-file/);
    const noTty = await cli(["login", "alice", "--token-file", join(server.dir, "t")], "pw");
    assert.equal(noTty.code, EXIT_USAGE);
    assert.match(noTty.err, /--password-stdin/);
    assert.equal(server.requests.length, before);
  });

  test("login at its password prompt has not made the token file yet: a kill there leaves none", async () => {
    server.reply = () => ({ body: { token: "cst_prompted", tokenId: "t3", expiresAt: null } });
    const file = join(server.dir, "prompted.token");
    const terminal = Object.assign(new PassThrough(), { isTTY: true, setRawMode: () => terminal });
    const err = new PassThrough();
    const prompted = new Promise((ok) => err.once("data", ok));
    const done = run(["login", "alice", "--token-file", file], {
      stdin: terminal,
      stdout: new PassThrough(),
      stderr: err,
      env,
    });
    assert.match(String(await prompted), /Password: /);
    assert.equal(existsSync(file), false);
    terminal.write("typed\r");
    assert.equal(await done, EXIT_OK);
    assert.equal(readFileSync(file, "utf8"), "cst_prompted\n");
    assert.deepEqual(lastBody(), { username: "alice", password: "typed" });
  });

  test("login falls back to CUSTOS_TOKEN_FILE", async () => {
    server.reply = () => ({ body: { token: "cst_env_file", tokenId: "t2", expiresAt: null } });
    const file = join(server.dir, "env.token");
    const r = await runCli(["login", "bob", "--password-stdin"], { ...env, CUSTOS_TOKEN_FILE: file }, "pw");
    assert.equal(r.code, EXIT_OK, r.err);
    assert.equal(readFileSync(file, "utf8"), "cst_env_file\n");
  });

  test("token create shows the token only in --json or writes it to --token-file", async () => {
    server.reply = () => ({
      body: { token: "cst_api_token", id: "tk1", name: "ci", policies: ["p"], expiresAt: null },
    });
    const file = join(server.dir, "api.token");
    const r = await cli(["token", "create", "--name", "ci", "--policy", "p", "--ttl", "1h", "--token-file", file]);
    assert.equal(r.code, EXIT_OK, r.err);
    assert.deepEqual(lastBody(), { name: "ci", policies: ["p"], ttlSeconds: 3600 });
    assert.equal(readFileSync(file, "utf8"), "cst_api_token\n");
    assert.ok(!r.out.includes("cst_api_token"));
    assert.match(r.out, /^id: +tk1$/m);
    const before = server.requests.length;
    assert.equal((await cli(["token", "create", "--name", "ci"])).code, EXIT_USAGE);
    assert.equal(server.requests.length, before);
  });

  test("users and groups: policies, state and membership changes", async () => {
    server.reply = () => ({ body: { name: "u" } });
    await cli(["user", "create", "u", "--policy", "a", "--policy", "b", "--password-stdin"], "pw\r\n");
    assert.deepEqual(lastBody(), { name: "u", policies: ["a", "b"], password: "pw" });
    await cli(["user", "update", "u", "--disable"]);
    assert.deepEqual([last().method, lastBody()], ["PATCH", { disabled: true }]);
    await cli(["user", "update", "u", "--clear-policies"]);
    assert.deepEqual(lastBody(), { policies: [] });
    assert.equal((await cli(["user", "update", "u", "--disable", "--enable"])).code, EXIT_USAGE);
    assert.equal((await cli(["user", "update", "u"])).code, EXIT_USAGE);

    await cli(["group", "create", "ops", "--member", "u1", "--member", "u2", "--policy", "p"]);
    assert.deepEqual(lastBody(), { name: "ops", policies: ["p"], members: ["u1", "u2"] });
    await cli(["group", "update", "ops", "--add", "u3", "--remove", "u1"]);
    assert.deepEqual(lastBody(), { addMembers: ["u3"], removeMembers: ["u1"] });
    await cli(["group", "delete", "ops"]);
    assert.deepEqual([last().method, last().url], ["DELETE", "/v1/groups/ops"]);
  });

  test("policy put from --rule options or a file", async () => {
    server.reply = () => ({ body: { name: "app-a" } });
    const r = await cli([
      "policy",
      "put",
      "app-a",
      "--rule",
      "key/app-a-*=key:encrypt,key:decrypt",
      "--rule",
      "audit=audit:read",
    ]);
    assert.equal(r.code, EXIT_OK, r.err);
    assert.equal(last().method, "PUT");
    assert.deepEqual(lastBody(), {
      rules: [
        { resource: "key/app-a-*", actions: ["key:encrypt", "key:decrypt"] },
        { resource: "audit", actions: ["audit:read"] },
      ],
    });
    const file = join(server.dir, "rules.json");
    writeFileSync(file, JSON.stringify({ description: "from file", rules: [{ resource: "key/x", actions: ["*"] }] }));
    await cli(["policy", "put", "x", "--file", file]);
    assert.deepEqual(lastBody(), { rules: [{ resource: "key/x", actions: ["*"] }], description: "from file" });

    assert.equal((await cli(["policy", "put", "x"])).code, EXIT_USAGE);
    assert.equal((await cli(["policy", "put", "x", "--rule", "no-equals"])).code, EXIT_USAGE);
    writeFileSync(file, "{not json");
    const bad = await cli(["policy", "put", "x", "--file", file]);
    assert.equal(bad.code, EXIT_USAGE);
    assert.match(bad.err, /not valid JSON/);
  });

  test("sudo grant needs exactly one subject and a duration", async () => {
    server.reply = () => ({ status: 201, body: { id: "g1" } });
    const r = await cli(["sudo", "grant", "--user", "alice", "--ttl", "30m", "--reason", "incident 42"]);
    assert.equal(r.code, EXIT_OK, r.err);
    assert.deepEqual(lastBody(), { ttlSeconds: 1800, reason: "incident 42", user: "alice" });
    assert.equal((await cli(["sudo", "grant", "--ttl", "30m", "--reason", "r"])).code, EXIT_USAGE);
    assert.equal(
      (await cli(["sudo", "grant", "--user", "a", "--group", "g", "--ttl", "30m", "--reason", "r"])).code,
      EXIT_USAGE,
    );
    assert.equal((await cli(["sudo", "grant", "--user", "a", "--reason", "r"])).code, EXIT_USAGE);
    server.reply = () => ({ body: { grants: [] } });
    await cli(["sudo", "list", "--active"]);
    assert.equal(last().url, "/v1/sudo/grants?active=true");
  });

  test("audit list passes its filters; audit verify exits 1 naming each bad record", async () => {
    server.reply = () => ({
      body: { records: [{ seq: 7, time: "t", principal: "user:a", action: "key.create", hash: "h" }] },
    });
    const list = await cli(["audit", "list", "--after", "5", "--limit", "2", "--action", "key.create", "--desc"]);
    assert.equal(last().url, "/v1/audit?after=5&limit=2&action=key.create&order=desc");
    assert.equal(list.out, "seq  time  principal  action\n7    t     user:a     key.create\n");

    server.reply = () => ({ body: { ok: true, records: 10, checkpoints: 1, problems: [] } });
    const ok = await cli(["audit", "verify"]);
    assert.deepEqual([ok.code, ok.out], [EXIT_OK, "ok: 10 records, 1 checkpoint verified\n"]);

    server.reply = () => ({ body: { ok: true, records: 12, checkpoints: 1, unsignedTail: 2, problems: [] } });
    const tail = await cli(["audit", "verify"]);
    assert.equal(
      tail.out,
      "ok: 12 records, 1 checkpoint verified\nnote: the newest 2 records not yet covered by a signed checkpoint\n",
    );

    server.reply = () => ({
      body: {
        ok: false,
        records: 10,
        checkpoints: 1,
        problems: [
          { seq: 4, kind: "hash_mismatch", message: "record altered" },
          { seq: 5, kind: "chain_broken", message: "prevHash differs" },
        ],
      },
    });
    const bad = await cli(["audit", "verify"]);
    assert.equal(bad.code, EXIT_CLIENT);
    assert.match(bad.out, /^record 4: hash_mismatch: record altered$/m);
    assert.match(bad.out, /^record 5: chain_broken: prevHash differs$/m);
  });

  test("status reads health without a token and exits 2 unless ok", async () => {
    server.reply = () => ({ status: 503, body: { status: "degraded", hsm: { status: "down" }, store: "ok" } });
    const r = await runCli(["status"], { CUSTOS_ADDR: server.url, CUSTOS_CACERT: server.certFile });
    assert.equal(r.code, EXIT_SERVER);
    assert.match(r.out, /^hsm\.status: down$/m);
    assert.equal(last().headers.authorization, undefined);
  });

  test("bin/custos.js runs the CLI in a fresh process and passes the exit code on", async () => {
    const bin = resolve(import.meta.dirname, "../../bin/custos.js");
    const child = spawn(process.execPath, [bin, "encrypt", "--key", "k"], { env: { ...process.env, ...env } });
    const out: Buffer[] = [];
    child.stdout.on("data", (c: Buffer) => out.push(c));
    child.stdin.end("from a process");
    const code = await new Promise<number | null>((ok) => child.on("close", ok));
    assert.equal(code, 0);
    assert.match(Buffer.concat(out).toString(), /^toy:/);

    const usage = spawn(process.execPath, [bin, "key", "destroy", "k", "--waiting", "soon"], { stdio: "ignore" });
    assert.equal(await new Promise((ok) => usage.on("close", ok)), EXIT_USAGE);
  });
});
