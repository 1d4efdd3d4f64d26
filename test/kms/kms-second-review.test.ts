import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createPublicKey, verify as nodeVerify, randomBytes } from "node:crypto";
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { type CustosInstance, errorCode, type HttpAnswer, ok, startCustos } from "../helpers/custos.js";
import { freePort } from "../helpers/ports.js";

/**
 * A second conformance pass over the KMS, against oracles that share no code with it:
 * `openssl` verifying signatures with the public keys Custos publishes, a ciphertext
 * reader written from docs/ciphertext-format.md, the SQLite file and server log it
 * writes, and docs/api.md's error codes. What test/kms/conformance.test.ts and the
 * e2e tests already pin is not repeated here.
 */

type Json = Record<string, unknown>;

/** The documented blob of a ciphertext (docs/ciphertext-format.md, "The blob"). */
function blobOf(text: string): Buffer {
  const m = /^custos:v1:([A-Za-z0-9+/]*={0,2})$/.exec(text);
  assert.ok(m?.[1] !== undefined, `not a documented ciphertext: ${text}`);
  return Buffer.from(m[1], "base64");
}

/** DER `SEQUENCE { INTEGER r, INTEGER s }` of a raw r‖s ECDSA signature (RFC 3279 2.2.3), for openssl. */
function rawToDer(raw: Buffer): Buffer {
  const int = (b: Buffer) => {
    let i = 0;
    while (i < b.length - 1 && b[i] === 0) i++;
    const v = b.subarray(i);
    const body = (v[0] ?? 0) & 0x80 ? Buffer.concat([Buffer.of(0), v]) : v;
    return Buffer.concat([Buffer.of(0x02, body.length), body]);
  };
  const seq = Buffer.concat([int(raw.subarray(0, 32)), int(raw.subarray(32))]);
  return Buffer.concat([Buffer.of(0x30, seq.length), seq]);
}

describe("KMS second conformance review", () => {
  let custos: CustosInstance;
  let work: string;
  const call = (method: string, path: string, body?: unknown, bearer?: string) =>
    custos.call(method, path, body, bearer);
  const okAsync = async (p: Promise<HttpAnswer>, status = 200): Promise<Json> => ok(await p, status);
  const refused = (r: HttpAnswer, status: number, code: string, what = "") =>
    assert.deepEqual([r.status, errorCode(r)], [status, code], `${what} ${r.text}`);
  const create = (name: string, purpose = "encrypt", algorithm?: string) =>
    okAsync(call("POST", "/v1/keys", { name, purpose, ...(algorithm ? { algorithm } : {}) }), 201);
  const encrypt = async (key: string, plaintext: Buffer, extra: Json = {}) =>
    (await okAsync(call("POST", `/v1/keys/${key}/encrypt`, { plaintext: plaintext.toString("base64"), ...extra })))
      .ciphertext as string;
  const sign = async (key: string, message: Buffer) =>
    okAsync(call("POST", `/v1/keys/${key}/sign`, { message: message.toString("base64") }));
  const verify = (key: string, message: Buffer, signature: Buffer, version?: number) =>
    call("POST", `/v1/keys/${key}/verify`, {
      message: message.toString("base64"),
      signature: signature.toString("base64"),
      ...(version === undefined ? {} : { version }),
    });
  /** The PEM the key publishes for `version` (GET /v1/keys/:name), written to a file for openssl. */
  const publicPem = async (key: string, version = 1): Promise<{ pem: string; file: string }> => {
    const details = await okAsync(call("GET", `/v1/keys/${key}`));
    const v = (details.versions as { version: number; publicKeyPem?: string }[]).find((x) => x.version === version);
    assert.ok(v?.publicKeyPem, `version ${version} of ${key} publishes a PEM`);
    const file = join(work, `${key}-v${version}.pem`);
    writeFileSync(file, v.publicKeyPem);
    return { pem: v.publicKeyPem, file };
  };
  const file = (name: string, bytes: Buffer | string): string => {
    const path = join(work, name);
    writeFileSync(path, bytes);
    return path;
  };
  const openssl = (args: string[]) => {
    const r = spawnSync("openssl", args, { timeout: 30_000 });
    return { status: r.status, out: `${r.stdout.toString("utf8")}${r.stderr.toString("utf8")}` };
  };
  /** `openssl dgst -sha256 -verify`: the signature over `message` checks out under `pem`. */
  const dgstVerifies = (pem: string, message: Buffer, signature: Buffer, extra: string[] = []) => {
    const id = randomBytes(6).toString("hex");
    const r = openssl([
      "dgst",
      "-sha256",
      "-verify",
      pem,
      ...extra,
      "-signature",
      file(`sig-${id}`, signature),
      file(`msg-${id}`, message),
    ]);
    return r.status === 0 && /Verified OK/.test(r.out);
  };
  const auditRows = (requestId: string) =>
    custos.query<{ action: string; resource: string; outcome: string; error_code: string | null }>(
      "SELECT action, resource, outcome, error_code, details FROM audit_log WHERE request_id = ?",
      requestId,
    );

  /** The x-request-id of an answer (the helper's HttpAnswer carries the headers at run time). */
  const requestIdOf = (r: HttpAnswer): string => {
    const id = (r as HttpAnswer & { headers?: Record<string, unknown> }).headers?.["x-request-id"];
    assert.equal(typeof id, "string", "x-request-id");
    return id as string;
  };

  before(async () => {
    work = mkdtempSync(join(tmpdir(), "custos-kms-review2-"));
    custos = await startCustos();
    await create("r2-enc");
    await create("r2-other");
    await create("r2-ec", "sign", "ecdsa-p256");
    await create("r2-ed", "sign", "ed25519");
    await create("r2-rsa", "sign", "rsa-3072");
  });
  after(async () => {
    await custos?.dispose();
    if (work) rmSync(work, { recursive: true, force: true });
  });

  test("published public keys are well-formed SPKI that openssl reads: named-curve P-256, Ed25519, RSA 3072-bit e=65537", async () => {
    const ec = openssl(["pkey", "-pubin", "-in", (await publicPem("r2-ec")).file, "-noout", "-text_pub"]);
    assert.equal(ec.status, 0, ec.out);
    assert.match(ec.out, /ASN1 OID: prime256v1/);
    assert.match(ec.out, /NIST CURVE: P-256/);
    const ed = openssl(["pkey", "-pubin", "-in", (await publicPem("r2-ed")).file, "-noout", "-text_pub"]);
    assert.equal(ed.status, 0, ed.out);
    assert.match(ed.out, /ED25519 Public-Key/);
    const rsa = openssl(["pkey", "-pubin", "-in", (await publicPem("r2-rsa")).file, "-noout", "-text_pub"]);
    assert.equal(rsa.status, 0, rsa.out);
    assert.match(rsa.out, /Public-Key: \(3072 bit\)/);
    assert.match(rsa.out, /Exponent: 65537 \(0x10001\)/);
    const enc = await okAsync(call("GET", "/v1/keys/r2-enc"));
    assert.ok(
      (enc.versions as Json[]).every((v) => v.publicKeyPem === undefined),
      "an encrypt key publishes no public key",
    );
  });

  test("ECDSA P-256 over HTTP: 64-byte raw r‖s that openssl dgst -verify accepts once DER-encoded; openssl refuses a changed message", async () => {
    const { file: pem } = await publicPem("r2-ec");
    const message = Buffer.from("release 2.0.0\0with a NUL and \xff bytes", "latin1");
    const s = await sign("r2-ec", message);
    assert.equal(s.scheme, "ecdsa-p256-sha256");
    assert.equal(s.version, 1);
    const raw = Buffer.from(s.signature as string, "base64");
    assert.equal(raw.length, 64, "raw r‖s, not DER");
    assert.equal(dgstVerifies(pem, message, rawToDer(raw)), true);
    assert.equal(dgstVerifies(pem, Buffer.concat([message, Buffer.of(0)]), rawToDer(raw)), false);
  });

  test("Ed25519 over HTTP: openssl pkeyutl -verify -rawin accepts the signature and refuses another message", async () => {
    const { file: pem } = await publicPem("r2-ed");
    const message = randomBytes(1000);
    const s = await sign("r2-ed", message);
    assert.equal(s.scheme, "ed25519");
    const sig = file("ed.sig", Buffer.from(s.signature as string, "base64"));
    const good = openssl([
      "pkeyutl",
      "-verify",
      "-pubin",
      "-inkey",
      pem,
      "-rawin",
      "-in",
      file("ed.msg", message),
      "-sigfile",
      sig,
    ]);
    assert.equal(good.status, 0, good.out);
    assert.match(good.out, /Signature Verified Successfully/);
    const other = Buffer.from(message);
    other[999] = (other[999] ?? 0) ^ 1;
    const bad = openssl([
      "pkeyutl",
      "-verify",
      "-pubin",
      "-inkey",
      pem,
      "-rawin",
      "-in",
      file("ed2.msg", other),
      "-sigfile",
      sig,
    ]);
    assert.notEqual(bad.status, 0, bad.out);
  });

  test("RSA-3072 over HTTP signs PKCS#1 v1.5 SHA-256 (the documented default): openssl dgst -verify accepts it, and not as PSS", async () => {
    const { file: pem } = await publicPem("r2-rsa");
    const message = Buffer.from("rsa message");
    const s = await sign("r2-rsa", message);
    assert.equal(s.scheme, "rsa-pkcs1-sha256");
    const sig = Buffer.from(s.signature as string, "base64");
    assert.equal(sig.length, 384);
    assert.equal(dgstVerifies(pem, message, sig), true);
    assert.equal(dgstVerifies(pem, message, sig, ["-sigopt", "rsa_padding_mode:pss"]), false);
    assert.equal(dgstVerifies(pem, Buffer.from("rsa messagE"), sig), false);
  });

  test("a 65,536-byte message signs under every algorithm and node:crypto verifies it; an empty one signs under ECDSA; 65,537 bytes is invalid_request", async () => {
    for (const [key, digest] of [
      ["r2-ec", "sha256"],
      ["r2-ed", null],
      ["r2-rsa", "sha256"],
    ] as const) {
      const pub = createPublicKey((await publicPem(key)).pem);
      const messages = key === "r2-ec" ? [Buffer.alloc(0), randomBytes(65_536)] : [randomBytes(65_536)];
      for (const message of messages) {
        const r = await call("POST", `/v1/keys/${key}/sign`, { message: message.toString("base64") });
        assert.equal(r.status, 200, `${key} ${message.length}: ${r.text}`);
        const sig = Buffer.from((r.body as Json).signature as string, "base64");
        const opts = key === "r2-ec" ? { key: pub, dsaEncoding: "ieee-p1363" as const } : pub;
        assert.equal(nodeVerify(digest, message, opts, sig), true, `${key} ${message.length} bytes`);
        assert.deepEqual((await verify(key, message, sig)).body, { valid: true });
      }
      const over = await call("POST", `/v1/keys/${key}/sign`, { message: randomBytes(65_537).toString("base64") });
      refused(over, 400, "invalid_request", key);
    }
  });

  test("an empty message, which the API accepts, signs under Ed25519 (RFC 8032's first test vector) and RSA PKCS#1 v1.5 instead of answering 500", async () => {
    const empty = Buffer.alloc(0);
    const ed = await call("POST", "/v1/keys/r2-ed/sign", { message: "" });
    assert.equal(ed.status, 200, ed.text);
    const edSig = Buffer.from((ed.body as Json).signature as string, "base64");
    assert.equal(nodeVerify(null, empty, createPublicKey((await publicPem("r2-ed")).pem), edSig), true);
    const rsa = await call("POST", "/v1/keys/r2-rsa/sign", { message: "" });
    assert.equal(rsa.status, 200, rsa.text);
    const rsaSig = Buffer.from((rsa.body as Json).signature as string, "base64");
    assert.equal(dgstVerifies((await publicPem("r2-rsa")).file, empty, rsaSig), true);
    // verify agrees on the empty message, and tells it from a one-byte one.
    for (const [key, sig] of [
      ["r2-ed", edSig],
      ["r2-rsa", rsaSig],
    ] as const) {
      assert.deepEqual((await verify(key, empty, sig)).body, { valid: true }, key);
      assert.deepEqual((await verify(key, Buffer.of(0), sig)).body, { valid: false }, key);
    }
  });

  test("verify answers 200 valid:false, never an error, for another key's signature, a truncated or empty one, and a DER ECDSA signature", async () => {
    await create("r2-ec-2", "sign", "ecdsa-p256");
    const message = Buffer.from("who signed this?");
    const mine = Buffer.from((await sign("r2-ec", message)).signature as string, "base64");
    const theirs = Buffer.from((await sign("r2-ec-2", message)).signature as string, "base64");
    assert.deepEqual((await verify("r2-ec", message, mine)).body, { valid: true });
    for (const [what, sig] of [
      ["another key's", theirs],
      ["truncated", mine.subarray(0, 63)],
      ["empty", Buffer.alloc(0)],
      ["DER-encoded", rawToDer(mine)],
      ["an Ed25519-sized zero", Buffer.alloc(64)],
    ] as const) {
      const r = await verify("r2-ec", message, sig);
      assert.deepEqual([r.status, r.body], [200, { valid: false }], what);
    }
    const edSig = Buffer.from((await sign("r2-ed", message)).signature as string, "base64");
    assert.deepEqual((await verify("r2-ec", message, edSig)).body, { valid: false }, "another algorithm's signature");
  });

  test("verify under a named version after rotation: v1 signatures verify as version 1 only; a version above the latest is invalid_request", async () => {
    await create("r2-ed-rot", "sign", "ed25519");
    const message = Buffer.from("versioned");
    const v1 = Buffer.from((await sign("r2-ed-rot", message)).signature as string, "base64");
    await okAsync(call("POST", "/v1/keys/r2-ed-rot/rotate"));
    const { file: pem1 } = await publicPem("r2-ed-rot", 1);
    const good = openssl([
      "pkeyutl",
      "-verify",
      "-pubin",
      "-inkey",
      pem1,
      "-rawin",
      "-in",
      file("rot.msg", message),
      "-sigfile",
      file("rot.sig", v1),
    ]);
    assert.equal(good.status, 0, good.out);
    assert.deepEqual((await verify("r2-ed-rot", message, v1, 1)).body, { valid: true });
    assert.deepEqual((await verify("r2-ed-rot", message, v1)).body, { valid: false }, "the default is the latest");
    refused(await verify("r2-ed-rot", message, v1, 3), 400, "invalid_request");
    refused(await verify("r2-ed-rot", message, v1, 0), 400, "invalid_request");
  });

  test("purpose is enforced on every route with key_purpose_mismatch 400: sign/verify on an encrypt key, every encrypt route on a sign key", async () => {
    const ct = await encrypt("r2-enc", Buffer.from("p"));
    refused(await call("POST", "/v1/keys/r2-enc/sign", { message: "eA==" }), 400, "key_purpose_mismatch", "sign");
    refused(await verify("r2-enc", Buffer.from("x"), Buffer.alloc(64)), 400, "key_purpose_mismatch", "verify");
    for (const [route, body] of [
      ["decrypt", { ciphertext: ct }],
      ["rewrap", { ciphertext: ct }],
      ["datakey", {}],
      ["datakey", { items: [{}] }],
      ["decrypt", { items: [{ ciphertext: ct }] }],
    ] as const) {
      refused(await call("POST", `/v1/keys/r2-ec/${route}`, body), 400, "key_purpose_mismatch", route);
    }
    refused(await call("PATCH", "/v1/keys/r2-ec", { minDecryptionVersion: 1 }), 400, "invalid_request");
  });

  test("encrypt under a named version: an older live version is used and named in the header; a retired one is version_too_old", async () => {
    await create("r2-ver");
    await okAsync(call("POST", "/v1/keys/r2-ver/rotate"));
    await okAsync(call("POST", "/v1/keys/r2-ver/rotate"));
    const r = await okAsync(call("POST", "/v1/keys/r2-ver/encrypt", { plaintext: "b2xk", version: 2 }));
    assert.equal(r.version, 2);
    assert.equal(blobOf(r.ciphertext as string).readUInt32BE(17), 2);
    const back = await okAsync(call("POST", "/v1/keys/r2-ver/decrypt", { ciphertext: r.ciphertext }));
    assert.deepEqual(back, { plaintext: "b2xk", version: 2 });
    refused(await call("POST", "/v1/keys/r2-ver/encrypt", { plaintext: "eA==", version: 4 }), 400, "invalid_request");
    await okAsync(call("PATCH", "/v1/keys/r2-ver", { minDecryptionVersion: 3 }));
    const retired = await call("POST", "/v1/keys/r2-ver/encrypt", { plaintext: "eA==", version: 2 });
    refused(retired, 400, "version_too_old");
    assert.match(retired.text, /version 2 is below minDecryptionVersion 3/);
    const batch = await okAsync(
      call("POST", "/v1/keys/r2-ver/encrypt", { items: [{ plaintext: "eA==", version: 1 }, { plaintext: "eA==" }] }),
    );
    const items = batch.items as Json[];
    assert.equal((items[0]?.error as Json | undefined)?.code, "version_too_old");
    assert.equal(items[1]?.version, 3);
  });

  test("rewrap of a ciphertext already at the latest version gives a new ciphertext (fresh IV) of the same plaintext; both decrypt", async () => {
    const context = { doc: "latest" };
    const ct = await encrypt("r2-enc", Buffer.from("already latest"), { context });
    const r = await okAsync(call("POST", "/v1/keys/r2-enc/rewrap", { ciphertext: ct, context }));
    assert.equal(r.version, 1);
    const before = blobOf(ct);
    const afterBlob = blobOf(r.ciphertext as string);
    assert.deepEqual(afterBlob.subarray(0, 22), before.subarray(0, 22), "same bound header");
    assert.notDeepEqual(afterBlob.subarray(22, 34), before.subarray(22, 34), "a fresh IV");
    for (const text of [ct, r.ciphertext as string]) {
      const back = await okAsync(call("POST", "/v1/keys/r2-enc/decrypt", { ciphertext: text, context }));
      assert.equal(Buffer.from(back.plaintext as string, "base64").toString(), "already latest");
    }
    const foreign = await call("POST", "/v1/keys/r2-other/rewrap", { ciphertext: ct, context });
    refused(foreign, 400, "decryption_failed", "another key's ciphertext");
  });

  test("destruction over HTTP as AWS KMS users expect: scheduled keys refuse use, cannot be enabled or rotated; cancel leaves them disabled", async () => {
    await create("r2-life");
    const ct = await encrypt("r2-life", Buffer.from("life"));
    for (const q of ["waitingSeconds=86399", "waitingSeconds=31536001", "waitingSeconds=-1", "immediate=yes"]) {
      refused(await call("DELETE", `/v1/keys/r2-life?${q}`), 400, "invalid_request", q);
    }
    refused(
      await call("DELETE", "/v1/keys/r2-life?immediate=true&waitingSeconds=86400"),
      400,
      "invalid_request",
      "both",
    );
    const scheduled = await okAsync(call("DELETE", "/v1/keys/r2-life?waitingSeconds=86400"));
    assert.equal(scheduled.state, "pending_destruction");
    assert.equal(typeof scheduled.destroyAt, "string");
    refused(await call("POST", "/v1/keys/r2-life/decrypt", { ciphertext: ct }), 409, "key_disabled", "decrypt");
    refused(await call("PATCH", "/v1/keys/r2-life", { enabled: true }), 409, "conflict", "enable");
    refused(await call("POST", "/v1/keys/r2-life/rotate"), 409, "conflict", "rotate");
    refused(await call("DELETE", "/v1/keys/r2-life?waitingSeconds=86400"), 409, "conflict", "schedule twice");
    const cancelled = await okAsync(call("POST", "/v1/keys/r2-life/cancel-destruction"));
    assert.deepEqual([cancelled.state, cancelled.destroyAt], ["disabled", null]);
    refused(await call("POST", "/v1/keys/r2-life/cancel-destruction"), 409, "conflict", "cancel twice");
    refused(await call("POST", "/v1/keys/r2-life/decrypt", { ciphertext: ct }), 409, "key_disabled", "still disabled");
    const rotated = await okAsync(call("POST", "/v1/keys/r2-life/rotate"));
    assert.equal(rotated.latestVersion, 2, "a disabled key may rotate");
    await okAsync(call("PATCH", "/v1/keys/r2-life", { enabled: true }));
    const back = await okAsync(call("POST", "/v1/keys/r2-life/decrypt", { ciphertext: ct }));
    assert.deepEqual(back, { plaintext: Buffer.from("life").toString("base64"), version: 1 });
  });

  test("a destroyed sign key: sign and verify are key_destroyed 410, rotate and PATCH too, and its public keys are no longer published", async () => {
    await create("r2-gone", "sign", "ecdsa-p256");
    const message = Buffer.from("before");
    const sig = Buffer.from((await sign("r2-gone", message)).signature as string, "base64");
    const destroyed = await okAsync(call("DELETE", "/v1/keys/r2-gone?immediate=true"));
    assert.equal(destroyed.state, "destroyed");
    assert.ok((destroyed.versions as Json[]).every((v) => v.publicKeyPem === undefined && v.state === "destroyed"));
    refused(await call("POST", "/v1/keys/r2-gone/sign", { message: "eA==" }), 410, "key_destroyed", "sign");
    refused(await verify("r2-gone", message, sig), 410, "key_destroyed", "verify");
    refused(await call("POST", "/v1/keys/r2-gone/rotate"), 410, "key_destroyed", "rotate");
    refused(await call("PATCH", "/v1/keys/r2-gone", { enabled: true }), 410, "key_destroyed", "enable");
    refused(await call("POST", "/v1/keys/r2-gone/cancel-destruction"), 410, "key_destroyed", "cancel");
  });

  test("random: exactly 1 and 1,024 bytes; 0, 1,025, 1.5, a string and a missing count are invalid_request", async () => {
    for (const n of [1, 1024]) {
      const r = await okAsync(call("POST", "/v1/random", { bytes: n }));
      assert.deepEqual(Object.keys(r), ["random"]);
      assert.equal(Buffer.from(r.random as string, "base64").length, n);
      assert.equal(Buffer.from(r.random as string, "base64").toString("base64"), r.random, "standard base64");
    }
    const a = await okAsync(call("POST", "/v1/random", { bytes: 32 }));
    const b = await okAsync(call("POST", "/v1/random", { bytes: 32 }));
    assert.notEqual(a.random, b.random);
    for (const body of [{ bytes: 0 }, { bytes: 1025 }, { bytes: 1.5 }, { bytes: "16" }, {}, { bytes: 16, x: 1 }]) {
      refused(await call("POST", "/v1/random", body), 400, "invalid_request", JSON.stringify(body));
    }
  });

  test("batch bounds on every batch route: items [] and 1,001 items are invalid_request; one item is served", async () => {
    const ct = await encrypt("r2-enc", Buffer.from("b"));
    const item: Record<string, Json> = {
      encrypt: { plaintext: "eA==" },
      decrypt: { ciphertext: ct },
      rewrap: { ciphertext: ct },
      datakey: {},
    };
    for (const [route, one] of Object.entries(item)) {
      for (const items of [[], Array.from({ length: 1001 }, () => one)]) {
        refused(
          await call("POST", `/v1/keys/r2-enc/${route}`, { items }),
          400,
          "invalid_request",
          `${route} ${items.length}`,
        );
      }
      const served = await okAsync(call("POST", `/v1/keys/r2-enc/${route}`, { items: [one] }));
      assert.equal((served.items as Json[]).length, 1, route);
      assert.equal((served.items as Json[])[0]?.error, undefined, route);
    }
  });

  test("a batch item whose context breaks the documented limits is refused whole, as 257 ASCII characters are, also for 129 emoji or a lone surrogate", async () => {
    const emoji = "\u{1F600}".repeat(129);
    const ascii = await call("POST", "/v1/keys/r2-enc/encrypt", {
      items: [{ plaintext: "eA==" }, { plaintext: "eA==", context: { k: "v".repeat(257) } }],
    });
    refused(ascii, 400, "invalid_request", "257 ASCII characters");
    for (const [what, context] of [
      ["129 emoji", { k: emoji }],
      ["a lone surrogate", { k: "\uD800" }],
    ] as const) {
      for (const route of ["encrypt", "datakey"]) {
        const item = route === "encrypt" ? { plaintext: "eA==" } : {};
        const r = await call("POST", `/v1/keys/r2-enc/${route}`, { items: [item, { ...item, context }] });
        refused(r, 400, "invalid_request", `${route} ${what}`);
      }
    }
  });

  test("datakey: bytes 16/24/32 only, plaintext:false returns no plaintext, and its ciphertext decrypts to a key of that size", async () => {
    for (const bytes of [0, 8, 31, 33, 64, "32"]) {
      refused(await call("POST", "/v1/keys/r2-enc/datakey", { bytes }), 400, "invalid_request", String(bytes));
    }
    const dk = await okAsync(
      call("POST", "/v1/keys/r2-enc/datakey", { bytes: 24, plaintext: false, context: { a: "b" } }),
    );
    assert.deepEqual(Object.keys(dk).sort(), ["ciphertext", "version"]);
    assert.equal(blobOf(dk.ciphertext as string).length, 34 + 24 + 16);
    const back = await okAsync(
      call("POST", "/v1/keys/r2-enc/decrypt", { ciphertext: dk.ciphertext, context: { a: "b" } }),
    );
    assert.equal(Buffer.from(back.plaintext as string, "base64").length, 24);
  });

  test("every KMS request leaves exactly one audit record under its x-request-id, with the action, key, outcome and error code", async () => {
    await create("r2-audit");
    const ct = await encrypt("r2-audit", Buffer.from("a"));
    const sig = (await sign("r2-ec", Buffer.from("m"))).signature as string;
    const cases: [string, Promise<HttpAnswer>, string, string, string | null][] = [
      ["encrypt", call("POST", "/v1/keys/r2-audit/encrypt", { plaintext: "eA==" }), "key.encrypt", "success", null],
      ["decrypt", call("POST", "/v1/keys/r2-audit/decrypt", { ciphertext: ct }), "key.decrypt", "success", null],
      ["rewrap", call("POST", "/v1/keys/r2-audit/rewrap", { ciphertext: ct }), "key.rewrap", "success", null],
      ["datakey", call("POST", "/v1/keys/r2-audit/datakey", {}), "key.datakey", "success", null],
      ["batch", call("POST", "/v1/keys/r2-audit/datakey", { items: [{}, {}, {}] }), "key.datakey", "success", null],
      ["sign", call("POST", "/v1/keys/r2-ec/sign", { message: "bQ==" }), "key.sign", "success", null],
      [
        "verify",
        call("POST", "/v1/keys/r2-ec/verify", { message: "bQ==", signature: sig }),
        "key.verify",
        "success",
        null,
      ],
      [
        "bad tag",
        call("POST", "/v1/keys/r2-audit/decrypt", { ciphertext: ct, context: { x: "y" } }),
        "key.decrypt",
        "failure",
        "decryption_failed",
      ],
      [
        "wrong purpose",
        call("POST", "/v1/keys/r2-ec/encrypt", { plaintext: "eA==" }),
        "key.encrypt",
        "failure",
        "key_purpose_mismatch",
      ],
    ];
    for (const [what, pending, action, outcome, code] of cases) {
      const r = await pending;
      assert.ok(r.status === 200 || code !== null, `${what}: ${r.text}`);
      const rows = auditRows(requestIdOf(r));
      assert.equal(rows.length, 1, `${what}: ${rows.length} audit records under its request id`);
      const [row] = rows;
      const key = what === "sign" || what === "verify" || what === "wrong purpose" ? "r2-ec" : "r2-audit";
      assert.deepEqual(
        [row?.action, row?.resource, row?.outcome, row?.error_code],
        [action, `key/${key}`, outcome, code],
        what,
      );
    }
  });

  test("a route's refusals are audited under the same action as its successes: random, scheduled destruction, cancel-destruction", async () => {
    await create("r2-sched");
    const none = await okAsync(call("POST", "/v1/auth/tokens", { name: "r2-no-rights", policies: [] }), 201);
    const pairs: [string, HttpAnswer, HttpAnswer][] = [];
    const served = await call("POST", "/v1/random", { bytes: 48 });
    pairs.push(["random", served, await call("POST", "/v1/random", { bytes: 48 }, none.token as string)]);
    const scheduled = await call("DELETE", "/v1/keys/r2-sched?waitingSeconds=86400");
    pairs.push(["schedule", scheduled, await call("DELETE", "/v1/keys/r2-sched?waitingSeconds=86400")]);
    const deniedSchedule = await call(
      "DELETE",
      "/v1/keys/r2-sched?waitingSeconds=86400",
      undefined,
      none.token as string,
    );
    pairs.push(["schedule, denied", scheduled, deniedSchedule]);
    const cancelled = await call("POST", "/v1/keys/r2-sched/cancel-destruction");
    pairs.push(["cancel", cancelled, await call("POST", "/v1/keys/r2-sched/cancel-destruction")]);
    const deniedCancel = await call("POST", "/v1/keys/r2-sched/cancel-destruction", undefined, none.token as string);
    pairs.push(["cancel, denied", cancelled, deniedCancel]);
    // A PATCH that changes settings and the state is one key.update, refused (pending destruction) or served.
    await create("r2-patch");
    const patched = await call("PATCH", "/v1/keys/r2-patch", { description: "a", enabled: true });
    await okAsync(call("DELETE", "/v1/keys/r2-patch?waitingSeconds=86400"));
    pairs.push(["update", patched, await call("PATCH", "/v1/keys/r2-patch", { description: "b", enabled: true })]);
    const [g] = auditRows(requestIdOf(served));
    assert.ok(!JSON.stringify(g).includes((served.body as Json).random as string), "the random bytes are recorded");
    const actions = pairs.map(([what, success, refusal]) => {
      assert.equal(success.status, 200, `${what}: ${success.text}`);
      assert.ok(refusal.status >= 400, `${what}: ${refusal.text}`);
      const [s] = auditRows(requestIdOf(success));
      const [r] = auditRows(requestIdOf(refusal));
      assert.deepEqual([s?.outcome, r?.outcome === "success"], ["success", false], what);
      return [what, s?.action, r?.action, s?.resource, r?.resource];
    });
    assert.deepEqual(
      actions.map(([what, , , sRes, rRes]) => [what, sRes === rRes && sRes !== ""]),
      actions.map(([what]) => [what, true]),
      `resources differ or are empty: ${JSON.stringify(actions)}`,
    );
    assert.deepEqual(
      actions.map(([what, sAct]) => [what, sAct]),
      actions.map(([what, , rAct]) => [what, rAct]),
    );
  });

  test("no plaintext, data key or random output reaches the database, its WAL or the server log, in any encoding", async () => {
    const marker = Buffer.from(`PLAINTEXT-MARKER-${randomBytes(8).toString("hex")}`);
    const ct = await encrypt("r2-enc", marker, { context: { c: "d" } });
    await okAsync(call("POST", "/v1/keys/r2-enc/decrypt", { ciphertext: ct, context: { c: "d" } }));
    await okAsync(call("POST", "/v1/keys/r2-enc/encrypt", { items: [{ plaintext: marker.toString("base64") }] }));
    const dk = Buffer.from((await okAsync(call("POST", "/v1/keys/r2-enc/datakey", {}))).plaintext as string, "base64");
    const rnd = Buffer.from((await okAsync(call("POST", "/v1/random", { bytes: 32 }))).random as string, "base64");
    const files = ["custos.db", "custos.db-wal", "server.log"].map((f) => join(custos.dir, f)).filter(existsSync);
    const haystack = Buffer.concat(files.map((f) => readFileSync(f)));
    for (const [what, secret] of [
      ["plaintext", marker],
      ["data key", dk],
      ["random", rnd],
    ] as const) {
      for (const spelling of [secret, Buffer.from(secret.toString("base64")), Buffer.from(secret.toString("hex"))]) {
        assert.equal(haystack.indexOf(spelling), -1, `${what} found in ${files.join(", ")}`);
      }
    }
  });

  describe("CLI", () => {
    test("encrypt | decrypt round-trips arbitrary bytes exactly (NUL, invalid UTF-8, CR LF, trailing newline); --out is 0600 even over a 0644 file", () => {
      const payloads = [
        Buffer.of(0x00),
        Buffer.of(0xff, 0xfe, 0x00, 0xc3, 0x28, 0xed, 0xa0, 0x80, 0x0d, 0x0a, 0x0a),
        Buffer.from("  leading and trailing whitespace \n\n"),
        randomBytes(65_536),
      ];
      for (const bytes of payloads) {
        const enc = custos.cli(["encrypt", "--key", "r2-enc", "--context", "k=v"], { input: bytes });
        assert.equal(enc.status, 0, enc.stderr);
        const dec = custos.cli(["decrypt", "--key", "r2-enc", "--context", "k=v"], { input: enc.stdout });
        assert.equal(dec.status, 0, dec.stderr);
        assert.ok(dec.stdoutBytes.equals(bytes), `${bytes.length} bytes came back altered`);
      }
      const out = file("plain.out", "old, wider mode");
      chmodSync(out, 0o644);
      const enc = custos.cli(["encrypt", "--key", "r2-enc"], { input: Buffer.of(0, 1, 2) });
      const dec = custos.cli(["decrypt", "--key", "r2-enc", "--out", out], { input: enc.stdout });
      assert.equal(dec.status, 0, dec.stderr);
      assert.deepEqual([readFileSync(out), statSync(out).mode & 0o777], [Buffer.of(0, 1, 2), 0o600]);
      const over = custos.cli(["encrypt", "--key", "r2-enc"], { input: randomBytes(65_537) });
      assert.equal(over.status, 1, over.stderr);
      assert.match(over.stderr, /invalid_request/);
    });

    test("--context splits at the first '=': the CLI's {a: 'b=c'} is the API's, and not {'a=b': 'c'}", async () => {
      const enc = custos.cli(["encrypt", "--key", "r2-enc", "--context", "a=b=c", "--context", "url=x?y=1&z=2"], {
        input: "eq",
      });
      assert.equal(enc.status, 0, enc.stderr);
      const ciphertext = enc.stdout.trim();
      const api = await call("POST", "/v1/keys/r2-enc/decrypt", {
        ciphertext,
        context: { url: "x?y=1&z=2", a: "b=c" },
      });
      assert.equal((api.body as Json).plaintext, Buffer.from("eq").toString("base64"), api.text);
      const split = await call("POST", "/v1/keys/r2-enc/decrypt", {
        ciphertext,
        context: { "a=b": "c", url: "x?y=1&z=2" },
      });
      refused(split, 400, "decryption_failed");
    });

    test("exit codes are the documented ones: 64 for a malformed --context or --bytes, 1 for a refusal or invalid signature, 2 when unreachable", async () => {
      for (const args of [
        ["encrypt", "--key", "r2-enc", "--context", "novalue"],
        ["encrypt", "--key", "r2-enc", "--context", "=v"],
        ["encrypt", "--key", "r2-enc", "--context", "k=1", "--context", "k=2"],
        ["random", "--bytes", "1025"],
        ["datakey", "--key", "r2-enc", "--bytes", "20"],
      ]) {
        const r = custos.cli(args, { input: "x" });
        assert.equal(r.status, 64, `${args.join(" ")}: ${r.stderr}`);
      }
      const ct = custos.cli(["encrypt", "--key", "r2-enc", "--context", "k=v"], { input: "x" }).stdout;
      const wrong = custos.cli(["decrypt", "--key", "r2-enc", "--context", "k=w"], { input: ct });
      assert.equal(wrong.status, 1, wrong.stderr);
      assert.match(wrong.stderr, /^error: decryption_failed: /m);
      assert.equal(wrong.stdoutBytes.length, 0);
      const invalid = custos.cli(["verify", "--key", "r2-ec", "--signature", Buffer.alloc(64).toString("base64")], {
        input: "x",
      });
      assert.deepEqual([invalid.status, invalid.stdout], [1, "invalid\n"]);
      const port = await freePort();
      const down = custos.cli(["random"], { env: { CUSTOS_ADDR: `https://127.0.0.1:${port}` } });
      assert.equal(down.status, 2, down.stderr);
    });

    test("sign --in a binary file: openssl verifies the CLI's signature with the PEM `key show --json` prints", () => {
      const message = Buffer.concat([Buffer.of(0, 0xff, 0x0a), randomBytes(4096)]);
      const s = custos.cli(["sign", "--key", "r2-ec", "--in", file("cli.msg", message), "--json"]);
      assert.equal(s.status, 0, s.stderr);
      const raw = Buffer.from((JSON.parse(s.stdout) as Json).signature as string, "base64");
      const shown = custos.cli(["key", "show", "r2-ec", "--json"]);
      assert.equal(shown.status, 0, shown.stderr);
      const pem = ((JSON.parse(shown.stdout) as Json).versions as Json[])[0]?.publicKeyPem as string;
      assert.equal(dgstVerifies(file("cli.pem", pem), message, rawToDer(raw)), true);
      const checked = custos.cli([
        "verify",
        "--key",
        "r2-ec",
        "--signature",
        raw.toString("base64"),
        "--in",
        join(work, "cli.msg"),
      ]);
      assert.deepEqual([checked.status, checked.stdout], [0, "valid\n"]);
    });

    test("random --bytes 1024 --hex prints exactly 2,048 hex digits; datakey --bytes 16 --no-plaintext prints no key", () => {
      const r = custos.cli(["random", "--bytes", "1024", "--hex"]);
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stdout, /^[0-9a-f]{2048}\n$/);
      const dk = custos.cli(["datakey", "--key", "r2-enc", "--bytes", "16", "--no-plaintext", "--json"]);
      assert.equal(dk.status, 0, dk.stderr);
      const answer = JSON.parse(dk.stdout) as Json;
      assert.equal(answer.plaintext, undefined);
      assert.equal(blobOf(answer.ciphertext as string).length, 34 + 16 + 16);
    });
  });
});
