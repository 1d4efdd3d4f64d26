import assert from "node:assert/strict";
import { createCipheriv, createDecipheriv, randomBytes } from "node:crypto";
import { after, before, describe, test } from "node:test";
import { validateContext } from "../../src/context/index.js";
import { parseAsDocumented } from "../helpers/ciphertext.js";
import { type CustosInstance, type HttpAnswer, httpsRaw, startCustos } from "../helpers/custos.js";

/**
 * The KMS over HTTPS checked against oracles that share no code with it: a ciphertext
 * parser written from docs/ciphertext-format.md alone, node:crypto, the SQLite file
 * and the API's own documented answers (docs/api.md "Keys").
 */

type Json = Record<string, unknown>;

const toText = (blob: Buffer) => `custos:v1:${blob.toString("base64")}`;
const FAILED = { error: { code: "decryption_failed", message: "decryption failed" } };
const code = (r: HttpAnswer) => (r.body as { error?: { code?: string } }).error?.code;

describe("KMS conformance over HTTPS", () => {
  let custos: CustosInstance;
  const call = (method: string, path: string, body?: unknown, bearer?: string) =>
    custos.call(method, path, body, bearer);
  const ok = async (p: Promise<HttpAnswer>, status = 200): Promise<Json> => {
    const r = await p;
    assert.equal(r.status, status, r.text);
    return r.body as Json;
  };
  const createKey = (name: string) => ok(call("POST", "/v1/keys", { name, purpose: "encrypt" }), 201);
  const encrypt = async (key: string, plaintext: Buffer, context?: Record<string, string>) =>
    (await ok(call("POST", `/v1/keys/${key}/encrypt`, { plaintext: plaintext.toString("base64"), context })))
      .ciphertext as string;
  const decrypt = (key: string, ciphertext: string, context?: Record<string, string>) =>
    call("POST", `/v1/keys/${key}/decrypt`, { ciphertext, ...(context ? { context } : {}) });
  const sqlite = <T>(sql: string, ...params: unknown[]): T => custos.query<T>(sql, ...params)[0] as T;

  before(async () => {
    custos = await startCustos();
    await createKey("conf-a");
    await createKey("conf-b");
  });
  after(async () => {
    await custos?.dispose();
  });

  test("a ciphertext read by the documented layout names the key's id in the database, its version and a fresh IV", async () => {
    const row = sqlite<{ id: string }>("SELECT id FROM keys WHERE name = ?", "conf-a");
    const batch = await ok(call("POST", "/v1/keys/conf-a/datakey", { items: Array.from({ length: 200 }, () => ({})) }));
    const ivs = new Set<string>();
    for (const item of batch.items as { ciphertext: string; version: number }[]) {
      const p = parseAsDocumented(item.ciphertext);
      assert.deepEqual([p.format, p.keyId, p.version, p.algorithm, p.plaintextLength], [1, row.id, 1, 1, 32]);
      assert.equal(item.version, 1);
      ivs.add(p.iv.toString("hex"));
    }
    assert.equal(ivs.size, 200, "every encryption under one key version uses its own IV");
    const single = parseAsDocumented(await encrypt("conf-a", Buffer.from("hello, custos")));
    assert.equal(single.plaintextLength, 13);
    assert.equal(single.blob.length, 63);
  });

  test("a data key is a working AES-256 key, and its ciphertext opens only under its own context, in any order", async () => {
    const dk = await ok(call("POST", "/v1/keys/conf-a/datakey", { context: { tenant: "acme", file: "f1" } }));
    const key = Buffer.from(dk.plaintext as string, "base64");
    assert.equal(key.length, 32);
    const iv = randomBytes(12);
    const c = createCipheriv("aes-256-gcm", key, iv);
    const sealed = Buffer.concat([c.update("data under a data key"), c.final()]);
    const tag = c.getAuthTag();

    const back = await decrypt("conf-a", dk.ciphertext as string, { file: "f1", tenant: "acme" });
    assert.equal(back.status, 200, back.text);
    const again = Buffer.from((back.body as Json).plaintext as string, "base64");
    const d = createDecipheriv("aes-256-gcm", again, iv).setAuthTag(tag);
    assert.equal(Buffer.concat([d.update(sealed), d.final()]).toString(), "data under a data key");

    for (const wrong of [{ tenant: "acme" }, { tenant: "acme", file: "f2" }, { tenant: "acme", file: "f1", x: "y" }]) {
      const r = await decrypt("conf-a", dk.ciphertext as string, wrong);
      assert.deepEqual([r.status, r.body], [400, FAILED], JSON.stringify(wrong));
    }
  });

  test("every flipped byte, truncation and extension of a ciphertext gets the one identical answer", async () => {
    const context = { k: "v" };
    const text = await encrypt("conf-a", Buffer.from("x"), context);
    const blob = parseAsDocumented(text).blob;
    assert.equal(blob.length, 51);
    const variants: [string, string][] = [];
    for (let i = 0; i < blob.length; i++) {
      const b = Buffer.from(blob);
      b[i] = (b[i] ?? 0) ^ 0x01;
      variants.push([`flip byte ${i}`, toText(b)]);
    }
    for (let n = 0; n < blob.length; n++) variants.push([`truncated to ${n}`, toText(blob.subarray(0, n))]);
    variants.push(["one byte more", toText(Buffer.concat([blob, Buffer.of(0)]))]);
    variants.push(["a second tag", toText(Buffer.concat([blob, blob.subarray(-16)]))]);
    variants.push(["another key's name", text]);
    for (const [what, ciphertext] of variants) {
      const key = what === "another key's name" ? "conf-b" : "conf-a";
      const r = await decrypt(key, ciphertext, context);
      assert.deepEqual([r.status, r.body], [400, FAILED], what);
    }
    assert.equal((await decrypt("conf-a", text, context)).status, 200);
  });

  test("a ciphertext in any spelling but canonical padded standard base64 is decryption_failed", async () => {
    let text = "";
    // Find a ciphertext whose base64 has a '+' or '/' and padding, so every spelling differs.
    for (let i = 0; i < 64 && !(/[+/]/.test(text.slice(10)) && text.endsWith("=")); i++) {
      text = await encrypt("conf-a", randomBytes(1 + (i % 3)));
    }
    assert.ok(/[+/]/.test(text.slice(10)) && text.endsWith("="), text);
    const b64 = text.slice(10);
    const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const unpadded = b64.replace(/=+$/, "");
    const last = unpadded.at(-1) ?? "A";
    const spellings: [string, string][] = [
      ["url alphabet", `custos:v1:${b64.replaceAll("+", "-").replaceAll("/", "_")}`],
      ["no padding", `custos:v1:${unpadded}`],
      [
        "non-zero padding bits",
        `custos:v1:${unpadded.slice(0, -1)}${alphabet[alphabet.indexOf(last) ^ 1]}${"=".repeat(b64.length - unpadded.length)}`,
      ],
      ["trailing newline", `${text}\n`],
      ["inner space", `custos:v1:${b64.slice(0, 8)} ${b64.slice(8)}`],
      ["leading space", ` ${text}`],
      ["upper-case prefix", `CUSTOS:V1:${b64}`],
    ];
    for (const [what, ciphertext] of spellings) {
      const r = await decrypt("conf-a", ciphertext);
      assert.deepEqual([r.status, r.body], [400, FAILED], what);
    }
    assert.equal((await decrypt("conf-a", text)).status, 200);
  });

  test("plaintext, message and signature accept only padded standard base64 (invalid_request otherwise)", async () => {
    await ok(call("POST", "/v1/keys", { name: "conf-signer", purpose: "sign" }), 201);
    const bytes = Buffer.from([0xfb, 0xff, 0xbf, 0x01]); // "+/+/AQ==" in standard base64
    const std = bytes.toString("base64");
    assert.equal(std, "+/+/AQ==");
    const bad = [
      bytes.toString("base64url"),
      std.replace(/=+$/, ""),
      `${std}\n`,
      ` ${std}`,
      `${std.slice(0, 4)} ${std.slice(4)}`,
    ];
    for (const spelling of bad) {
      for (const [path, body] of [
        ["/v1/keys/conf-a/encrypt", { plaintext: spelling }],
        ["/v1/keys/conf-signer/sign", { message: spelling }],
        ["/v1/keys/conf-signer/verify", { message: std, signature: spelling }],
      ] as const) {
        const r = await call("POST", path, body);
        assert.deepEqual([r.status, code(r)], [400, "invalid_request"], `${path} ${JSON.stringify(spelling)}`);
      }
    }
    assert.equal((await call("POST", "/v1/keys/conf-a/encrypt", { plaintext: std })).status, 200);
  });

  test("plaintext size: 1 and 65,536 bytes encrypt, 0 and 65,537 are invalid_request", async () => {
    for (const n of [1, 65_536]) {
      const pt = randomBytes(n);
      const ct = await encrypt("conf-a", pt);
      assert.equal(parseAsDocumented(ct).plaintextLength, n);
      const back = await decrypt("conf-a", ct);
      assert.equal((back.body as Json).plaintext, pt.toString("base64"));
    }
    for (const n of [0, 65_537]) {
      const r = await call("POST", "/v1/keys/conf-a/encrypt", { plaintext: randomBytes(n).toString("base64") });
      assert.deepEqual([r.status, code(r)], [400, "invalid_request"], `${n} bytes`);
    }
  });

  test("context is bound byte for byte: NFC and NFD spellings are different contexts, never normalised", async () => {
    const nfc = "caf\u00e9";
    const nfd = "cafe\u0301";
    assert.equal(nfc.normalize("NFD"), nfd);
    const ct = await encrypt("conf-a", Buffer.from("n"), { [nfc]: nfc });
    assert.equal((await decrypt("conf-a", ct, { [nfc]: nfc })).status, 200);
    for (const wrong of [{ [nfd]: nfc }, { [nfc]: nfd }, { [nfd]: nfd }]) {
      const r = await decrypt("conf-a", ct, wrong);
      assert.deepEqual([r.status, r.body], [400, FAILED]);
    }
    // Both spellings as keys of one context are two entries, and both are needed.
    const both = await encrypt("conf-a", Buffer.from("n"), { [nfc]: "1", [nfd]: "2" });
    assert.equal((await decrypt("conf-a", both, { [nfd]: "2", [nfc]: "1" })).status, 200);
    assert.deepEqual((await decrypt("conf-a", both, { [nfc]: "1" })).body, FAILED);
  });

  test("context limits at the edges over HTTP: 64 entries of 256 characters pass; 65 entries, 257 characters or '' fail", async () => {
    const big = Object.fromEntries(Array.from({ length: 64 }, (_, i) => [`${i}`.padEnd(256, "k"), "v".repeat(256)]));
    const ct = await encrypt("conf-a", Buffer.from("x"), big);
    assert.equal((await decrypt("conf-a", ct, big)).status, 200);
    const refused = [
      { ...big, extra: "v" },
      { k: "v".repeat(257) },
      { ["k".repeat(257)]: "v" },
      { k: "" },
      { "": "v" },
      { k: 1 },
      { k: null },
      { k: ["v"] },
      { k: "\uD800" },
    ];
    for (const context of refused) {
      const r = await call("POST", "/v1/keys/conf-a/encrypt", { plaintext: "eA==", context });
      assert.deepEqual([r.status, code(r)], [400, "invalid_request"], JSON.stringify(context).slice(0, 80));
    }
  });

  test("context lengths count UTF-16 code units, as documented: 128 emoji fit, 129 are refused saying so", async () => {
    const fits = await call("POST", "/v1/keys/conf-a/encrypt", {
      plaintext: "eA==",
      context: { emoji: "\u{1F600}".repeat(128) },
    });
    assert.equal(fits.status, 200, fits.text);
    const over = await call("POST", "/v1/keys/conf-a/encrypt", {
      plaintext: "eA==",
      context: { emoji: "\u{1F600}".repeat(129) },
    });
    assert.deepEqual([over.status, code(over)], [400, "invalid_request"]);
    assert.match(over.text, /UTF-16 code units/);
  });

  test("a context key named __proto__ is refused as reserved, over HTTP and in the service alike", async () => {
    const raw = (path: string, body: string) =>
      httpsRaw({
        port: custos.port,
        ca: custos.ca,
        method: "POST",
        path,
        headers: { "content-type": "application/json", authorization: `Bearer ${custos.adminToken}` },
        body,
      });
    const proto = await raw("/v1/keys/conf-a/encrypt", '{"plaintext":"eA==","context":{"__proto__":"x"}}');
    assert.deepEqual([proto.status, code(proto)], [400, "invalid_request"], proto.text);
    assert.match(proto.text, /reserved member name/);
    const ctor = await raw("/v1/keys/conf-a/encrypt", '{"plaintext":"eA==","context":{"constructor":{"prototype":1}}}');
    assert.deepEqual([ctor.status, code(ctor)], [400, "invalid_request"], ctor.text);
    assert.throws(() => validateContext(JSON.parse('{"__proto__":"x"}')), /context key __proto__ is reserved/);
  });

  test("a JSON context with a repeated key binds the last value, and the audit record shows the same one", async () => {
    const body = '{"plaintext":"eA==","context":{"dup":"first","dup":"last"}}';
    const r = await httpsRaw({
      port: custos.port,
      ca: custos.ca,
      method: "POST",
      path: "/v1/keys/conf-b/encrypt",
      headers: { "content-type": "application/json", authorization: `Bearer ${custos.adminToken}` },
      body,
    });
    assert.equal(r.status, 200, r.text);
    const ct = (r.body as Json).ciphertext as string;
    assert.equal((await decrypt("conf-b", ct, { dup: "last" })).status, 200);
    assert.deepEqual((await decrypt("conf-b", ct, { dup: "first" })).body, FAILED);
    const audit = await ok(call("GET", "/v1/audit?action=key.encrypt&resource=key/conf-b&order=desc&limit=1"));
    const [record] = audit.records as { details: { context?: unknown } }[];
    assert.deepEqual(record?.details.context, { dup: "last" });
  });

  test("versions: above the newest is decryption_failed, below minDecryptionVersion is version_too_old; the minimum stays in 1..newest and only rises", async () => {
    await createKey("conf-rot");
    const v1 = await encrypt("conf-rot", Buffer.from("one"), { a: "b" });
    await ok(call("POST", "/v1/keys/conf-rot/rotate"));
    const future = parseAsDocumented(v1).blob;
    future.writeUInt32BE(3, 17);
    assert.deepEqual((await decrypt("conf-rot", toText(future), { a: "b" })).body, FAILED);

    for (const min of [0, 3, 2_147_483_648, 1.5]) {
      const r = await call("PATCH", "/v1/keys/conf-rot", { minDecryptionVersion: min });
      assert.deepEqual([r.status, code(r)], [400, "invalid_request"], `min ${min}`);
    }
    const rewrapped = await ok(call("POST", "/v1/keys/conf-rot/rewrap", { ciphertext: v1, context: { a: "b" } }));
    assert.equal(rewrapped.version, 2);
    const wrongCtx = await call("POST", "/v1/keys/conf-rot/rewrap", { ciphertext: v1, context: { a: "c" } });
    assert.deepEqual(wrongCtx.body, FAILED);

    assert.equal((await ok(call("PATCH", "/v1/keys/conf-rot", { minDecryptionVersion: 2 }))).minDecryptionVersion, 2);
    const old = await decrypt("conf-rot", v1, { a: "b" });
    assert.equal(old.status, 400);
    assert.deepEqual(old.body, {
      error: { code: "version_too_old", message: 'key "conf-rot" version 1 is below minDecryptionVersion 2' },
    });
    const back = await decrypt("conf-rot", rewrapped.ciphertext as string, { a: "b" });
    assert.equal((back.body as Json).plaintext, Buffer.from("one").toString("base64"));
    const lower = await call("PATCH", "/v1/keys/conf-rot", { minDecryptionVersion: 1 });
    assert.deepEqual([lower.status, code(lower)], [400, "invalid_request"]);
    assert.equal(sqlite<{ m: number }>("SELECT min_decryption_version AS m FROM keys WHERE name = ?", "conf-rot").m, 2);
  });

  test("another key's retired-version ciphertext is decryption_failed, not version_too_old (nothing leaks across keys)", async () => {
    await createKey("conf-retired");
    await ok(call("POST", "/v1/keys/conf-retired/rotate"));
    await ok(call("PATCH", "/v1/keys/conf-retired", { minDecryptionVersion: 2 }));
    const foreign = await encrypt("conf-b", Buffer.from("b"));
    assert.equal(parseAsDocumented(foreign).version, 1);
    assert.deepEqual((await decrypt("conf-retired", foreign)).body, FAILED);
  });

  test("a PATCH answered with an error changes nothing (minDecryptionVersion is one-way)", async () => {
    await createKey("conf-patch");
    await ok(call("POST", "/v1/keys/conf-patch/rotate"));
    await ok(call("DELETE", "/v1/keys/conf-patch"));
    const r = await call("PATCH", "/v1/keys/conf-patch", { minDecryptionVersion: 2, enabled: true });
    assert.deepEqual([r.status, code(r)], [409, "conflict"], r.text);
    const key = await ok(call("GET", "/v1/keys/conf-patch"));
    assert.equal(key.minDecryptionVersion, 1, "the refused request retired version 1 for good");
  });

  test("a PATCH refused as forbidden changes nothing", async () => {
    await createKey("conf-acl");
    const policy = { rules: [{ resource: "key/conf-acl", actions: ["key:update", "key:read"] }] };
    await ok(call("PUT", "/v1/policies/conf-acl-update", policy));
    const token = (await ok(call("POST", "/v1/auth/tokens", { name: "conf-acl", policies: ["conf-acl-update"] }), 201))
      .token as string;
    const r = await call("PATCH", "/v1/keys/conf-acl", { description: "changed", enabled: false }, token);
    assert.deepEqual([r.status, code(r)], [403, "forbidden"], r.text);
    const key = await ok(call("GET", "/v1/keys/conf-acl"));
    assert.equal(key.description, "", "a forbidden request changed the key");
  });

  test("key states over HTTP: disabled is key_disabled 409; destroyed is key_destroyed 410 for encrypt and decryption_failed for decrypt", async () => {
    await createKey("conf-state");
    const ct = await encrypt("conf-state", Buffer.from("s"));
    await ok(call("PATCH", "/v1/keys/conf-state", { enabled: false }));
    for (const [path, body] of [
      ["encrypt", { plaintext: "eA==" }],
      ["decrypt", { ciphertext: ct }],
      ["decrypt", { ciphertext: "garbage" }],
      ["rewrap", { ciphertext: ct }],
      ["datakey", {}],
    ] as const) {
      const r = await call("POST", `/v1/keys/conf-state/${path}`, body);
      assert.deepEqual([r.status, code(r)], [409, "key_disabled"], path);
    }
    await ok(call("DELETE", "/v1/keys/conf-state?immediate=true"));
    for (const path of ["encrypt", "datakey"]) {
      const r = await call("POST", `/v1/keys/conf-state/${path}`, path === "encrypt" ? { plaintext: "eA==" } : {});
      assert.deepEqual([r.status, code(r)], [410, "key_destroyed"], path);
    }
    for (const path of ["decrypt", "rewrap"]) {
      assert.deepEqual((await call("POST", `/v1/keys/conf-state/${path}`, { ciphertext: ct })).body, FAILED, path);
    }
    const wrapped = sqlite<{ n: number }>(
      "SELECT count(*) AS n FROM key_versions v JOIN keys k ON k.id = v.key_id WHERE k.name = ? AND v.wrapped_key IS NOT NULL",
      "conf-state",
    );
    assert.equal(wrapped.n, 0);
    const again = await call("POST", "/v1/keys", { name: "conf-state", purpose: "encrypt" });
    assert.deepEqual([again.status, code(again)], [409, "conflict"]);
  });

  test("key names: case-sensitive and distinct; 129 characters or path-like names are invalid_request", async () => {
    await createKey("Conf-Case");
    await createKey("conf-case");
    const upper = await ok(call("GET", "/v1/keys/Conf-Case"));
    const lower = await ok(call("GET", "/v1/keys/conf-case"));
    assert.notEqual(upper.id, lower.id);
    const ct = await encrypt("Conf-Case", Buffer.from("c"));
    assert.deepEqual((await decrypt("conf-case", ct)).body, FAILED);
    for (const name of [`n${"x".repeat(128)}`, "a/b", "..", ".hidden", "-x", "a b", "a\u00e9"]) {
      const r = await call("POST", "/v1/keys", { name, purpose: "encrypt" });
      assert.deepEqual([r.status, code(r)], [400, "invalid_request"], name);
    }
    const encoded = await call("GET", "/v1/keys/conf-a%2F..%2Fconf-b");
    assert.deepEqual([encoded.status, code(encoded)], [400, "invalid_request"]);
  });

  test("a key whose name has 101 to 128 characters (documented 1..128) is reachable through its routes", async () => {
    const hundred = `h${"x".repeat(99)}`;
    await createKey(hundred);
    assert.equal((await ok(call("GET", `/v1/keys/${hundred}`))).name, hundred);
    const long = `n${"x".repeat(127)}`;
    assert.equal((await createKey(long)).name, long, "creation accepts 128 characters");
    const r = await call("POST", `/v1/keys/${long}/encrypt`, { plaintext: "eA==" });
    assert.equal(r.status, 200, r.text);
    assert.equal((await call("GET", `/v1/keys/${long}`)).status, 200);
  });

  test("listing pages by name in byte order with prefix, after and limit; bad limits are invalid_request", async () => {
    for (const n of ["lst-b", "lst-A", "lst-a", "lst-c"]) await createKey(n);
    const names = async (q: string) =>
      ((await ok(call("GET", `/v1/keys?${q}`))).keys as { name: string }[]).map((k) => k.name);
    assert.deepEqual(await names("prefix=lst-"), ["lst-A", "lst-a", "lst-b", "lst-c"]);
    assert.deepEqual(await names("prefix=lst-&limit=2"), ["lst-A", "lst-a"]);
    assert.deepEqual(await names("prefix=lst-&limit=2&after=lst-a"), ["lst-b", "lst-c"]);
    assert.deepEqual(await names("prefix=lst-&after=lst-c"), []);
    assert.deepEqual(await names("prefix=lst_"), []);
    for (const q of ["limit=0", "limit=1001", "limit=-1", "limit=abc"]) {
      const r = await call("GET", `/v1/keys?${q}`);
      assert.deepEqual([r.status, code(r)], [400, "invalid_request"], q);
    }
  });

  test("batch data keys: each item is bound to its own context and size; 1000 items are served", async () => {
    const items = Array.from({ length: 5 }, (_, i) => ({ context: { item: String(i) }, bytes: [16, 24, 32][i % 3] }));
    const out = (await ok(call("POST", "/v1/keys/conf-a/datakey", { items }))).items as Json[];
    for (const [i, item] of out.entries()) {
      const key = Buffer.from(item.plaintext as string, "base64");
      assert.equal(key.length, items[i]?.bytes);
      const own = await decrypt("conf-a", item.ciphertext as string, { item: String(i) });
      assert.equal((own.body as Json).plaintext, item.plaintext);
      const next = await decrypt("conf-a", item.ciphertext as string, { item: String((i + 1) % 5) });
      assert.deepEqual(next.body, FAILED);
    }
    const full = await ok(
      call("POST", "/v1/keys/conf-a/datakey", { items: Array.from({ length: 1000 }, () => ({ plaintext: false })) }),
    );
    const all = full.items as Json[];
    assert.equal(all.length, 1000);
    assert.ok(all.every((x) => x.plaintext === undefined && typeof x.ciphertext === "string"));
  });

  test("a batch with a plaintext that is not base64 is malformed: refused whole, naming the item", async () => {
    const r = await call("POST", "/v1/keys/conf-a/encrypt", {
      items: [{ plaintext: "eA==" }, { plaintext: "" }, { plaintext: "not base64!" }],
    });
    assert.deepEqual([r.status, code(r)], [400, "invalid_request"], r.text);
    assert.match(r.text, /items\[2\]\.plaintext must be standard base64/);
    const wellFormed = await ok(
      call("POST", "/v1/keys/conf-a/encrypt", { items: [{ plaintext: "eA==" }, { plaintext: "" }] }),
    );
    const items = wellFormed.items as Json[];
    assert.equal(typeof items[0]?.ciphertext, "string");
    assert.equal(
      (items[1]?.error as Json | undefined)?.code,
      "invalid_request",
      "an empty plaintext fails its item alone",
    );
  });

  test("a batch decrypt's audit record names the version and context of what it decrypted", async () => {
    const ct = await encrypt("conf-b", Buffer.from("z"), { doc: "batch-audit" });
    await ok(call("POST", "/v1/keys/conf-b/decrypt", { items: [{ ciphertext: ct, context: { doc: "batch-audit" } }] }));
    const audit = await ok(call("GET", "/v1/audit?action=key.decrypt&resource=key/conf-b&order=desc&limit=1"));
    const [record] = audit.records as { details: Json }[];
    assert.match(JSON.stringify(record?.details), /batch-audit/);
  });
});
