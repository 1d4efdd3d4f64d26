import assert from "node:assert/strict";
import { createCipheriv, createDecipheriv, randomBytes } from "node:crypto";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import Database from "better-sqlite3";
import pkcs11js from "pkcs11js";
import { parseAsDocumented } from "../helpers/ciphertext.js";
import { type CustosInstance, errorCode, type HttpAnswer, ok, startCustos } from "../helpers/custos.js";
import { Injector } from "../hsm/injector.js";

/**
 * A review of the KMS batch operations over HTTPS (all items at once, HSM calls
 * gathered per key version). Oracles: node:crypto AES-256-GCM with the AAD of
 * docs/ciphertext-format.md, under key versions whose material the test chose (wrapped
 * by the token's root key from a second PKCS#11 handle and written into the store while
 * the server was down); the same item sent alone to the single-item route; and the
 * audit_log table.
 */

type Json = Record<string, unknown>;
type Answer = HttpAnswer & { readonly headers?: Record<string, unknown> };
type Context = Record<string, string>;

const b64 = (bytes: Buffer | string) => Buffer.from(bytes).toString("base64");

/** canonical(context) as docs/ciphertext-format.md writes it out. */
function canonical(context: Context): Buffer {
  const pairs = Object.entries(context)
    .map(([k, v]) => [Buffer.from(k, "utf8"), Buffer.from(v, "utf8")] as const)
    .sort((a, b) => Buffer.compare(a[0], b[0]));
  const u32 = (n: number) => {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(n);
    return b;
  };
  return Buffer.concat([u32(pairs.length), ...pairs.flatMap(([k, v]) => [u32(k.length), k, u32(v.length), v])]);
}

/** Opens a ciphertext with node:crypto, the layout and AAD read from the docs alone. */
function openByHand(text: string, key: Buffer, context: Context = {}): Buffer {
  const { blob, iv } = parseAsDocumented(text);
  const d = createDecipheriv("aes-256-gcm", key, iv);
  d.setAAD(Buffer.concat([blob.subarray(0, 22), canonical(context)]));
  d.setAuthTag(blob.subarray(blob.length - 16));
  return Buffer.concat([d.update(blob.subarray(34, blob.length - 16)), d.final()]);
}

/** Seals a ciphertext with node:crypto in the documented format. */
function sealByHand(keyId: string, version: number, key: Buffer, plaintext: Buffer, context: Context = {}): string {
  const bound = Buffer.alloc(22);
  bound.writeUInt8(1, 0);
  Buffer.from(keyId.replaceAll("-", ""), "hex").copy(bound, 1);
  bound.writeUInt32BE(version, 17);
  bound.writeUInt8(1, 21);
  const iv = randomBytes(12);
  const c = createCipheriv("aes-256-gcm", key, iv);
  c.setAAD(Buffer.concat([bound, canonical(context)]));
  const body = Buffer.concat([c.update(plaintext), c.final()]);
  return `custos:v1:${Buffer.concat([bound, iv, body, c.getAuthTag()]).toString("base64")}`;
}

/** Each known key wrapped by the token's root key, from a logged-in second handle. */
function wrapKnownKeys(custos: CustosInstance, keys: Buffer[]): Buffer[] {
  const inj = new Injector(custos.token);
  // Login state lasts while one of our sessions is open: keep this one open throughout.
  const held = inj.p.C_OpenSession(inj.slot(), pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
  try {
    inj.p.C_Login(held, pkcs11js.CKU_USER, custos.token.pin);
    return keys.map((k) => inj.wrapKnownKey(k));
  } finally {
    inj.p.C_CloseSession(held);
  }
}

describe("KMS batches over HTTPS, against node:crypto and the single-item routes", () => {
  let custos: CustosInstance;
  const K1 = randomBytes(32);
  const K2 = randomBytes(32);
  let oracleId = "";
  /** Ciphertexts of key "holes" made before its version 2 was destroyed in the store. */
  const holes: Record<"v1" | "v2", string> = { v1: "", v2: "" };

  const call = (method: string, path: string, body?: unknown) => custos.call(method, path, body) as Promise<Answer>;
  const created = async (name: string) => ok(await call("POST", "/v1/keys", { name, purpose: "encrypt" }), 201);
  const encrypt = async (key: string, text: string, extra: Json = {}) =>
    ok(await call("POST", `/v1/keys/${key}/encrypt`, { plaintext: b64(text), ...extra })).ciphertext as string;
  const items = (r: Answer) => ok(r).items as Json[];
  const rows = (r: Answer) =>
    custos
      .query<{ action: string; outcome: string; details: string }>(
        "SELECT action, outcome, details FROM audit_log WHERE request_id = ?",
        r.headers?.["x-request-id"],
      )
      .map((row) => ({ ...row, details: JSON.parse(row.details) as Json }));
  /** What the single-item route answers, shaped as a batch item: the body, or `{ error }`. */
  const alone = async (op: string, key: string, item: Json) => {
    const r = await call("POST", `/v1/keys/${key}/${op}`, item);
    return r.status === 200 ? (r.body as Json) : { error: (r.body as Json).error };
  };

  before(async () => {
    custos = await startCustos();
    oracleId = (await created("oracle")).id as string;
    ok(await call("POST", "/v1/keys/oracle/rotate"));
    await created("holes");
    holes.v1 = await encrypt("holes", "one", { context: { doc: "1" } });
    ok(await call("POST", "/v1/keys/holes/rotate"));
    holes.v2 = await encrypt("holes", "two", { context: { doc: "2" } });
    ok(await call("POST", "/v1/keys/holes/rotate"));
    await created("other");
    await custos.stop();
    const [w1, w2] = wrapKnownKeys(custos, [K1, K2]);
    const db = new Database(join(custos.dir, "custos.db"));
    try {
      const put = db.prepare("UPDATE key_versions SET wrapped_key = ? WHERE key_id = ? AND version = ?");
      assert.equal(put.run(w1, oracleId, 1).changes, 1);
      assert.equal(put.run(w2, oracleId, 2).changes, 1);
      // A destroyed version as key destruction leaves it in the store: no material.
      const holesId = (db.prepare("SELECT id FROM keys WHERE name = 'holes'").get() as { id: string }).id;
      db.prepare(
        "UPDATE key_versions SET state = 'destroyed', wrapped_key = NULL WHERE key_id = ? AND version = 2",
      ).run(holesId);
    } finally {
      db.close();
    }
    await custos.start();
    ok(await call("PATCH", "/v1/keys/holes", { minDecryptionVersion: 2 }));
  });
  after(async () => {
    await custos?.dispose();
  });

  describe("node:crypto as the oracle", () => {
    test("an encrypt batch's ciphertexts open with node:crypto under the documented AAD, each with its own plaintext, context and version", async () => {
      const contexts: Context[] = [
        {},
        { b: "2", a: "1" },
        { "\uFF5E": "bmp", "\u{1F600}": "astral" },
        { "\u00e9": "nfc", "10": "x", "9": "y" },
      ];
      const sizes = [1, 2, 15, 16, 17, 31, 300, 4096, 65_536];
      const sent = Array.from({ length: 36 }, (_, i) => ({
        plaintext: randomBytes(sizes[i % sizes.length] ?? 1),
        context: contexts[i % contexts.length] ?? {},
        version: [1, 2, undefined][i % 3],
      }));
      const r = await call("POST", "/v1/keys/oracle/encrypt", {
        items: sent.map((s) => ({
          plaintext: b64(s.plaintext),
          context: s.context,
          ...(s.version ? { version: s.version } : {}),
        })),
      });
      const out = items(r);
      assert.equal(out.length, sent.length);
      const ivs = new Set<string>();
      out.forEach((item, i) => {
        const s = sent[i];
        assert.ok(s);
        const version = s.version ?? 2;
        const d = parseAsDocumented(item.ciphertext as string);
        assert.deepEqual([item.version, d.version, d.keyId], [version, version, oracleId], `item ${i}`);
        const opened = openByHand(item.ciphertext as string, version === 1 ? K1 : K2, s.context);
        assert.ok(opened.equals(s.plaintext), `item ${i}: node:crypto opened another plaintext`);
        ivs.add(d.iv.toString("hex"));
      });
      assert.equal(ivs.size, sent.length, "an IV was used twice under one batch");
    });

    test("node:crypto ciphertexts of both versions decrypt in one batch, in order, between failing items; a rewrap batch moves them to the latest, as node:crypto reads it", async () => {
      const made = Array.from({ length: 24 }, (_, i) => {
        const version = i % 2 === 0 ? 1 : 2;
        const plaintext = randomBytes(1 + ((i * 37) % 200));
        const context = { n: String(i), ...(i % 3 === 0 ? { t: "\u{1F510}" } : {}) };
        return {
          version,
          plaintext,
          context,
          ciphertext: sealByHand(oracleId, version, version === 1 ? K1 : K2, plaintext, context),
        };
      });
      // Every third item fails: the wrong context, so the items around it must still be theirs.
      const sent = made.map((m, i) => ({
        ciphertext: m.ciphertext,
        context: i % 3 === 2 ? { n: "wrong" } : m.context,
      }));
      const dec = items(await call("POST", "/v1/keys/oracle/decrypt", { items: sent }));
      dec.forEach((item, i) => {
        const m = made[i];
        assert.ok(m);
        if (i % 3 === 2) assert.deepEqual(item, { error: { code: "decryption_failed", message: "decryption failed" } });
        else assert.deepEqual(item, { plaintext: b64(m.plaintext), version: m.version }, `item ${i}`);
      });
      const rw = items(await call("POST", "/v1/keys/oracle/rewrap", { items: sent }));
      rw.forEach((item, i) => {
        const m = made[i];
        assert.ok(m);
        if (i % 3 === 2) {
          assert.equal((item.error as Json | undefined)?.code, "decryption_failed", `item ${i}`);
          return;
        }
        assert.equal(item.version, 2, `item ${i}`);
        assert.equal(parseAsDocumented(item.ciphertext as string).version, 2);
        assert.ok(openByHand(item.ciphertext as string, K2, m.context).equals(m.plaintext), `item ${i}`);
      });
    });

    test("a data key batch: each ciphertext opens with node:crypto to the key returned (16, 24, 32 bytes), plaintext:false returns none, no two keys are equal, and the API's decrypt agrees", async () => {
      const sent = Array.from({ length: 60 }, (_, i) => ({
        bytes: ([16, 24, 32] as const)[i % 3],
        plaintext: i % 4 !== 1,
        context: { item: String(i) },
      }));
      const out = items(await call("POST", "/v1/keys/oracle/datakey", { items: sent }));
      assert.equal(out.length, sent.length);
      const keys = new Set<string>();
      out.forEach((item, i) => {
        const s = sent[i];
        assert.ok(s);
        assert.equal(item.version, 2);
        const opened = openByHand(item.ciphertext as string, K2, s.context);
        assert.equal(opened.length, s.bytes, `item ${i}`);
        if (s.plaintext) assert.equal(item.plaintext, b64(opened), `item ${i}`);
        else assert.equal("plaintext" in item, false, `item ${i} returned a plaintext`);
        keys.add(opened.toString("hex"));
      });
      assert.equal(keys.size, sent.length, "two data keys are equal");
      const back = items(
        await call("POST", "/v1/keys/oracle/decrypt", {
          items: out.map((item, i) => ({ ciphertext: item.ciphertext, context: { item: String(i) } })),
        }),
      );
      back.forEach((item, i) => {
        const expected = openByHand(out[i]?.ciphertext as string, K2, { item: String(i) });
        assert.deepEqual(item, { plaintext: b64(expected), version: 2 });
      });
    });
  });

  describe("each item answers as the single call does", () => {
    test("a mixed decrypt batch: each item's answer, errors' codes and messages included, is the single decrypt's, in order", async () => {
      const v3 = await encrypt("holes", "three", { context: { doc: "3", part: "x" } });
      const v3b = await encrypt("holes", "drei");
      const other = await encrypt("other", "foreign");
      const blob = parseAsDocumented(v3).blob;
      const future = Buffer.from(blob);
      future.writeUInt32BE(9, 17);
      // The same bytes with a padding bit set: the lowest bit of the last data character is always one.
      const last = v3.replace(/=+$/, "").length - 1;
      const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
      const flipped = alphabet[alphabet.indexOf(v3[last] ?? "") ^ 1] ?? "";
      const noncanonical = `${v3.slice(0, last)}${flipped}${v3.slice(last + 1)}`;
      assert.match(v3, /=$/, "the blob's length leaves padding bits");
      const sent: Json[] = [
        { ciphertext: v3, context: { doc: "3", part: "x" } },
        { ciphertext: v3, context: { part: "x", doc: "3" } },
        { ciphertext: v3, context: { doc: "3" } },
        { ciphertext: v3 },
        { ciphertext: holes.v1, context: { doc: "1" } },
        { ciphertext: holes.v2, context: { doc: "2" } },
        { ciphertext: other },
        { ciphertext: "garbage" },
        { ciphertext: noncanonical, context: { doc: "3", part: "x" } },
        { ciphertext: `custos:v1:${future.toString("base64")}`, context: { doc: "3", part: "x" } },
        { ciphertext: `custos:v1:${blob.subarray(0, blob.length - 1).toString("base64")}` },
        { ciphertext: v3b },
        { ciphertext: v3, context: { doc: "3", part: "x" } },
      ];
      const batch = items(await call("POST", "/v1/keys/holes/decrypt", { items: sent }));
      const singles = [];
      for (const item of sent) singles.push(await alone("decrypt", "holes", item));
      assert.deepEqual(batch, singles);
      // The oracle must have seen each kind: two plaintexts, the retired version, the uniform failure.
      assert.deepEqual(
        singles.map((s) => (s.error as Json | undefined)?.code ?? "ok"),
        [
          "ok",
          "ok",
          "decryption_failed",
          "decryption_failed",
          "version_too_old",
          ...Array(6).fill("decryption_failed"),
          "ok",
          "ok",
        ],
      );
    });

    test("a mixed rewrap batch: failures are the single rewrap's, successes land on the latest version and decrypt to the same plaintext", async () => {
      const v3 = await encrypt("holes", "again", { context: { k: "v" } });
      const sent: Json[] = [
        { ciphertext: v3, context: { k: "v" } },
        { ciphertext: v3 },
        { ciphertext: holes.v1, context: { doc: "1" } },
        { ciphertext: holes.v2, context: { doc: "2" } },
        { ciphertext: "custos:v1:" },
      ];
      const batch = items(await call("POST", "/v1/keys/holes/rewrap", { items: sent }));
      for (const [i, item] of sent.entries()) {
        const single = await alone("rewrap", "holes", item);
        const got = batch[i] ?? {};
        if (single.error) assert.deepEqual(got, single, `item ${i}`);
        else {
          assert.equal(got.version, single.version, `item ${i}`);
          const back = ok(
            await call("POST", "/v1/keys/holes/decrypt", { ciphertext: got.ciphertext, context: { k: "v" } }),
          );
          assert.equal(back.plaintext, b64("again"));
        }
      }
    });

    test("a mixed encrypt batch: an empty plaintext, a retired, an unknown version fail as alone, in order; the rest decrypt", async () => {
      const sent: Json[] = [
        { plaintext: b64("x"), version: 3 },
        { plaintext: "" },
        { plaintext: b64("x"), version: 1 },
        { plaintext: b64("x"), version: 4 },
        { plaintext: b64("y"), context: { a: "b" } },
        { plaintext: b64("y"), context: { a: "b" } },
      ];
      const batch = items(await call("POST", "/v1/keys/holes/encrypt", { items: sent }));
      for (const [i, item] of sent.entries()) {
        const single = await alone("encrypt", "holes", item);
        const got = batch[i] ?? {};
        if (single.error) assert.deepEqual(got, single, `item ${i}`);
        else assert.equal(got.version, single.version, `item ${i}`);
      }
      assert.notEqual(batch[4]?.ciphertext, batch[5]?.ciphertext, "two equal items sealed alike");
      for (const i of [4, 5]) {
        const back = await call("POST", "/v1/keys/holes/decrypt", {
          ciphertext: batch[i]?.ciphertext,
          context: { a: "b" },
        });
        assert.equal(ok(back).plaintext, b64("y"));
      }
    });
  });

  describe("what a batch refuses whole", () => {
    test("a missing, sign, disabled or destroyed key answers a batch whole as it answers the single call, on every batch operation", async () => {
      const ciphertext = await encrypt("other", "c");
      ok(await call("POST", "/v1/keys", { name: "signer", purpose: "sign" }), 201);
      await created("off");
      const offCiphertext = await encrypt("off", "c");
      ok(await call("PATCH", "/v1/keys/off", { enabled: false }));
      await created("gone");
      const goneCiphertext = await encrypt("gone", "c");
      ok(await call("DELETE", "/v1/keys/gone?immediate=true"));
      const bodies: Record<string, (ct: string) => Json> = {
        encrypt: () => ({ plaintext: b64("x") }),
        decrypt: (ct) => ({ ciphertext: ct }),
        rewrap: (ct) => ({ ciphertext: ct }),
        datakey: () => ({ bytes: 16 }),
      };
      const cases: [string, string][] = [
        ["missing", ciphertext],
        ["signer", ciphertext],
        ["off", offCiphertext],
        ["gone", goneCiphertext],
      ];
      for (const [key, ct] of cases) {
        for (const [op, body] of Object.entries(bodies)) {
          const single = await call("POST", `/v1/keys/${key}/${op}`, body(ct));
          const batch = await call("POST", `/v1/keys/${key}/${op}`, { items: [body(ct), body(ct)] });
          assert.notEqual(single.status, 200, `${op} on ${key}: ${single.text}`);
          assert.deepEqual([batch.status, batch.body], [single.status, single.body], `${op} on ${key}`);
        }
      }
    });

    test("a malformed item refuses the batch whole with invalid_request naming the item, and nothing is recorded as done", async () => {
      const good = { plaintext: b64("x") };
      const ciphertext = await encrypt("other", "c");
      const cases: [string, string, Json, RegExp][] = [
        ["bad base64", "encrypt", { items: [good, good, { plaintext: "not base64!" }] }, /items\[2\]/],
        ["a string item", "decrypt", { items: [{ ciphertext }, "x"] }, /items\/1\b/],
        ["a null item", "rewrap", { items: [{ ciphertext }, null] }, /items\/1\b/],
        ["129 emoji", "encrypt", { items: [good, { ...good, context: { k: "\u{1F600}".repeat(129) } }] }, /items\[1\]/],
        [
          "65 entries",
          "decrypt",
          {
            items: [
              { ciphertext },
              { ciphertext },
              { ciphertext },
              { ciphertext, context: Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`k${i}`, "v"])) },
            ],
          },
          /items\/3\b/,
        ],
        ["a 257-character name", "datakey", { items: [{}, { context: { ["n".repeat(257)]: "v" } }] }, /items\/1\b/],
        ["a bad size", "datakey", { items: [{ bytes: 12 }, {}] }, /items\/0\b/],
      ];
      for (const [what, op, body, names] of cases) {
        const r = await call("POST", `/v1/keys/other/${op}`, body);
        assert.deepEqual([r.status, errorCode(r)], [400, "invalid_request"], `${what}: ${r.text}`);
        assert.match(((r.body as Json).error as Json).message as string, names, what);
        assert.deepEqual(
          rows(r).map((row) => row.outcome),
          ["failure"],
          `${what}: one record, of the refusal`,
        );
      }
    });

    test("0 and 1001 items are refused; 1000 items are answered in order, each its own", async () => {
      for (const n of [0, 1001]) {
        const r = await call("POST", "/v1/keys/oracle/encrypt", {
          items: Array.from({ length: n }, () => ({ plaintext: b64("x") })),
        });
        assert.deepEqual([r.status, errorCode(r)], [400, "invalid_request"], r.text.slice(0, 200));
      }
      const texts = Array.from({ length: 1000 }, (_, i) => `m${i}`);
      const enc = items(
        await call("POST", "/v1/keys/oracle/encrypt", {
          items: texts.map((t, i) => ({ plaintext: b64(t), context: { i: String(i % 7) } })),
        }),
      );
      assert.equal(enc.length, 1000);
      enc.forEach((item, i) => {
        assert.equal(openByHand(item.ciphertext as string, K2, { i: String(i % 7) }).toString(), texts[i]);
      });
      const dec = items(
        await call("POST", "/v1/keys/oracle/decrypt", {
          items: [...enc]
            .reverse()
            .map((item, j) => ({ ciphertext: item.ciphertext, context: { i: String((999 - j) % 7) } })),
        }),
      );
      assert.deepEqual(
        dec.map((d) => d.plaintext),
        [...texts].reverse().map((t) => b64(t)),
      );
    });
  });

  describe("batches racing key changes", () => {
    test("decrypt, rewrap and encrypt batches racing rotations: every item is right", async () => {
      await created("spin");
      const texts = Array.from({ length: 40 }, (_, i) => `spin-${i}`);
      const ctx = (i: number) => ({ i: String(i) });
      const enc = items(
        await call("POST", "/v1/keys/spin/encrypt", {
          items: texts.map((t, i) => ({ plaintext: b64(t), context: ctx(i) })),
        }),
      );
      const sent = enc.map((e, i) => ({ ciphertext: e.ciphertext, context: ctx(i) }));
      const decrypts = Array.from({ length: 4 }, () => call("POST", "/v1/keys/spin/decrypt", { items: sent }));
      const rewraps = Array.from({ length: 3 }, () => call("POST", "/v1/keys/spin/rewrap", { items: sent }));
      const rotations = Array.from({ length: 3 }, () => call("POST", "/v1/keys/spin/rotate"));
      const encrypts = Array.from({ length: 3 }, () =>
        call("POST", "/v1/keys/spin/encrypt", { items: texts.map((t, i) => ({ plaintext: b64(t), context: ctx(i) })) }),
      );
      for (const r of await Promise.all(rotations)) assert.ok(r.status === 200 || errorCode(r) === "conflict", r.text);
      for (const r of await Promise.all(decrypts)) {
        assert.deepEqual(
          items(r).map((d) => d.plaintext),
          texts.map((t) => b64(t)),
        );
      }
      const latest = ok(await call("GET", "/v1/keys/spin")).latestVersion as number;
      for (const r of [...(await Promise.all(rewraps)), ...(await Promise.all(encrypts))]) {
        const made = items(r);
        const back = items(
          await call("POST", "/v1/keys/spin/decrypt", {
            items: made.map((m, i) => ({ ciphertext: m.ciphertext, context: ctx(i) })),
          }),
        );
        made.forEach((m, i) => {
          assert.equal(parseAsDocumented(m.ciphertext as string).version, m.version);
          assert.ok((m.version as number) >= 1 && (m.version as number) <= latest);
          assert.deepEqual(back[i], { plaintext: b64(texts[i] ?? ""), version: m.version });
        });
      }
    });

    test("concurrent encrypt, data key and decrypt batches on one key: node:crypto opens every item to its own plaintext", async () => {
      const encrypts = Array.from({ length: 5 }, (_, b) =>
        call("POST", "/v1/keys/oracle/encrypt", {
          items: Array.from({ length: 50 }, (_, i) => ({ plaintext: b64(`b${b}-i${i}`), context: { b: String(b) } })),
        }),
      );
      const datakeys = Array.from({ length: 3 }, () =>
        call("POST", "/v1/keys/oracle/datakey", {
          items: Array.from({ length: 50 }, (_, i) => ({ context: { i: String(i) } })),
        }),
      );
      const made = Array.from({ length: 50 }, (_, i) => Buffer.from(`hand-${i}`));
      const sealed = made.map((m, i) => sealByHand(oracleId, 1 + (i % 2), i % 2 ? K2 : K1, m));
      const decrypts = Array.from({ length: 5 }, () =>
        call("POST", "/v1/keys/oracle/decrypt", { items: sealed.map((ciphertext) => ({ ciphertext })) }),
      );
      for (const [b, r] of (await Promise.all(encrypts)).entries()) {
        items(r).forEach((item, i) => {
          assert.equal(openByHand(item.ciphertext as string, K2, { b: String(b) }).toString(), `b${b}-i${i}`);
        });
      }
      const keys = new Set<string>();
      for (const r of await Promise.all(datakeys)) {
        items(r).forEach((item, i) => {
          const key = openByHand(item.ciphertext as string, K2, { i: String(i) });
          assert.equal(item.plaintext, b64(key));
          keys.add(key.toString("hex"));
        });
      }
      assert.equal(keys.size, 150, "two data keys are equal");
      for (const r of await Promise.all(decrypts)) {
        assert.deepEqual(
          items(r).map((item) => item.plaintext),
          made.map((m) => b64(m)),
        );
      }
    });

    test("decrypt batches racing a disable and a scheduled destruction: each is answered whole and right, or refused whole with key_disabled", async () => {
      await created("switch");
      const texts = Array.from({ length: 30 }, (_, i) => `switch-${i}`);
      const enc = items(
        await call("POST", "/v1/keys/switch/encrypt", { items: texts.map((t) => ({ plaintext: b64(t) })) }),
      );
      const sent = { items: enc.map((e) => ({ ciphertext: e.ciphertext })) };
      const expected = texts.map((t) => ({ plaintext: b64(t), version: 1 }));
      const race = async (change: () => Promise<Answer>, undo: () => Promise<Answer>) => {
        const batches = Array.from({ length: 6 }, () => call("POST", "/v1/keys/switch/decrypt", sent));
        ok(await change());
        const after = await call("POST", "/v1/keys/switch/decrypt", sent);
        assert.deepEqual([after.status, errorCode(after)], [409, "key_disabled"], after.text);
        for (const r of await Promise.all(batches)) {
          if (r.status === 200) assert.deepEqual(items(r), expected);
          else assert.deepEqual([r.status, errorCode(r)], [409, "key_disabled"], r.text);
        }
        ok(await undo());
        assert.deepEqual(items(await call("POST", "/v1/keys/switch/decrypt", sent)), expected);
      };
      await race(
        () => call("PATCH", "/v1/keys/switch", { enabled: false }),
        () => call("PATCH", "/v1/keys/switch", { enabled: true }),
      );
      await race(
        () => call("DELETE", "/v1/keys/switch?waitingSeconds=86400"),
        // A cancelled destruction leaves the key disabled (docs/api.md), so it is enabled again too.
        async () => {
          ok(await call("POST", "/v1/keys/switch/cancel-destruction"));
          return call("PATCH", "/v1/keys/switch", { enabled: true });
        },
      );
    });
  });

  describe("the batch's one audit record", () => {
    test("a decrypt batch's record counts its items and lists each version and context its successes used, once, in no spelling twice; no plaintext", async () => {
      const marker = `BATCH-PLAINTEXT-${randomBytes(6).toString("hex")}`;
      const v1 = sealByHand(oracleId, 1, K1, Buffer.from(marker), { b: "2", a: "1" });
      const v2 = sealByHand(oracleId, 2, K2, Buffer.from(marker), { "\u{1F511}": "\u00e9" });
      const r = await call("POST", "/v1/keys/oracle/decrypt", {
        items: [
          { ciphertext: v1, context: { b: "2", a: "1" } },
          { ciphertext: v1, context: { a: "1", b: "2" } },
          { ciphertext: v2, context: { "\u{1F511}": "\u00e9" } },
          { ciphertext: v2, context: { failed: "context" } },
        ],
      });
      assert.equal(items(r).length, 4);
      const audited = rows(r);
      assert.equal(audited.length, 1);
      const details: Json = audited[0]?.details ?? {};
      assert.equal(audited[0]?.action, "key.decrypt");
      assert.deepEqual(
        [details.batch, details.items, details.succeeded, details.failed, details.versions],
        [true, 4, 3, 1, [1, 2]],
      );
      const contexts = (details.contexts as Context[]).map((c) => canonical(c).toString("hex")).sort();
      assert.deepEqual(
        contexts,
        [canonical({ a: "1", b: "2" }), canonical({ "\u{1F511}": "\u00e9" })].map((c) => c.toString("hex")).sort(),
      );
      const text = JSON.stringify(audited);
      for (const leak of [marker, b64(marker), Buffer.from(marker).toString("hex")]) assert.ok(!text.includes(leak));
    });

    test("no data key of a data key batch appears anywhere in the audit log, in base64 or hex", async () => {
      const out = items(
        await call("POST", "/v1/keys/oracle/datakey", {
          items: [{}, { bytes: 16 }, { bytes: 24, context: { x: "y" } }],
        }),
      );
      const log = custos
        .query<{ details: string }>("SELECT details FROM audit_log")
        .map((row) => row.details)
        .join("\n");
      for (const item of out) {
        const key = Buffer.from(item.plaintext as string, "base64");
        assert.ok(!log.includes(key.toString("base64")) && !log.includes(key.toString("hex")));
      }
    });

    test("a data key batch's record says, as a single data key's does, which sizes it made and whether it handed out plaintext keys", async () => {
      const single = await call("POST", "/v1/keys/oracle/datakey", { bytes: 16, plaintext: true });
      const singleDetails = rows(single)[0]?.details ?? {};
      assert.deepEqual([singleDetails.bytes, singleDetails.withPlaintext], [16, true]);
      const batch = await call("POST", "/v1/keys/oracle/datakey", {
        items: [{ bytes: 16 }, { bytes: 24, plaintext: false }],
      });
      const details = rows(batch)[0]?.details ?? {};
      assert.deepEqual(
        [details.bytes, details.withPlaintext],
        [
          [16, 24],
          [false, true],
        ],
      );
    });
  });

  test("while the HSM is unreachable a batch is refused whole with 503 hsm_unavailable, as the single call is, so clients retry it", async () => {
    const down = await startCustos({ hsm: { operationTimeoutMs: 1500 } });
    try {
      ok(await down.call("POST", "/v1/keys", { name: "k", purpose: "encrypt" }), 201);
      const ciphertext = ok(await down.call("POST", "/v1/keys/k/encrypt", { plaintext: b64("x") })).ciphertext;
      const plugBack = new Injector(down.token).removeToken();
      try {
        let health = await down.call("GET", "/v1/health", undefined, null);
        for (let i = 0; i < 100 && health.status === 200; i++) {
          await new Promise((r) => setTimeout(r, 200));
          health = await down.call("GET", "/v1/health", undefined, null);
        }
        assert.equal(health.status, 503, health.text);
        for (const [op, body] of [
          ["decrypt", { ciphertext }],
          ["encrypt", { plaintext: b64("x") }],
        ] as const) {
          const single = await down.call("POST", `/v1/keys/k/${op}`, body);
          assert.deepEqual([single.status, errorCode(single)], [503, "hsm_unavailable"], single.text);
          const batch = await down.call("POST", `/v1/keys/k/${op}`, { items: [body, body] });
          assert.deepEqual([batch.status, errorCode(batch)], [503, "hsm_unavailable"], `${op}: ${batch.text}`);
        }
      } finally {
        plugBack();
      }
    } finally {
      await down.dispose();
    }
  });

  test("contexts in a batch: another key order opens the same; NFC and NFD are different contexts; 128 emoji and 64 entries are within the limits", async () => {
    const wide = Object.fromEntries(Array.from({ length: 64 }, (_, i) => [`k${i}`, "\u{1F600}".repeat(128)]));
    const sent: [Context, Context][] = [
      [
        { b: "2", a: "1" },
        { a: "1", b: "2" },
      ],
      [{ name: "caf\u00e9" }, { name: "cafe\u0301" }],
      [{ ["\u{1F600}".repeat(128)]: "v" }, { ["\u{1F600}".repeat(128)]: "v" }],
      [wide, Object.fromEntries(Object.entries(wide).reverse())],
    ];
    const enc = items(
      await call("POST", "/v1/keys/oracle/encrypt", {
        items: sent.map(([c], i) => ({ plaintext: b64(`c${i}`), context: c })),
      }),
    );
    const asked = sent.map(([, c], i) => ({ ciphertext: enc[i]?.ciphertext, context: c }));
    const batch = items(await call("POST", "/v1/keys/oracle/decrypt", { items: asked }));
    const singles = [];
    for (const item of asked) singles.push(await alone("decrypt", "oracle", item));
    assert.deepEqual(batch, singles);
    assert.deepEqual(
      batch.map((b) => b.plaintext ?? (b.error as Json).code),
      [b64("c0"), "decryption_failed", b64("c2"), b64("c3")],
    );
    enc.forEach((e, i) => {
      assert.equal(openByHand(e.ciphertext as string, K2, sent[i]?.[0] ?? {}).toString(), `c${i}`);
    });
  });
});
