import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { isCustosError } from "../../src/errors/index.js";
import type { HsmKeyRef } from "../../src/hsm/index.js";
import { Pkcs11Keystore } from "../../src/hsm/pkcs11/index.js";
import { Secret } from "../../src/secret/index.js";
import { createTestToken, type TestToken } from "../helpers/softhsm.js";
import { Injector } from "./injector.js";

/**
 * Faults injected under a live keystore. The keystore is the only registered user of
 * the module in this process (as in production), which is what lets it re-initialise
 * the library when SoftHSM needs that to see a re-inserted or re-initialised token.
 */

/** Each operation's deadline (queueing for a session included): short, so outages answer soon, with room for a busy machine. */
const TIMEOUT_MS = 3000;

interface Tally {
  ok: number;
  unavailable: number;
  other: unknown[];
}

describe("self-healing under injected faults", () => {
  let token: TestToken;
  let ks: Pkcs11Keystore;
  let inj: Injector;
  let wrapped: Buffer;
  let signer: HsmKeyRef;
  let mac: HsmKeyRef;
  const warnings: string[] = [];

  before(async () => {
    token = createTestToken("custos-faults");
    ks = await Pkcs11Keystore.open({
      modulePath: token.modulePath,
      tokenLabel: token.label,
      pin: Secret.fromString(token.pin),
      operationTimeoutMs: TIMEOUT_MS,
      logger: { warn: (o, m) => warnings.push(`${m} ${JSON.stringify(o)}`), info: () => {} },
    });
    inj = new Injector(token);
    await ks.createRootKey();
    wrapped = await ks.generateWrappedAesKey();
    signer = (await ks.generateKeyPair("ecdsa-p256", "fault-signer")).ref;
    mac = await ks.ensureHmacKey("fault-hmac");
  });

  after(async () => {
    await ks.close();
  });

  /** One request of each kind that needs a key: round trip, signature, MAC. */
  async function request(i: number): Promise<void> {
    const pt = Buffer.from(`payload ${i}`);
    const aad = Buffer.from(`aad ${i}`);
    const ct = await ks.encrypt(wrapped, pt, aad);
    assert.deepEqual((await ks.decrypt(wrapped, ct.iv, ct.ciphertext, aad)).expose(), pt);
    // The batch path: one job on the HSM thread each way.
    const sealed = await ks.encryptMany(wrapped, [
      { plaintext: pt, aad },
      { plaintext: aad, aad: pt },
    ]);
    const opened = await ks.decryptMany(
      wrapped,
      sealed.map((c, k) => {
        if (isCustosError(c)) throw c;
        return { iv: c.iv, ciphertext: c.ciphertext, aad: k === 0 ? aad : pt };
      }),
    );
    assert.deepEqual(
      opened.map((o) => (isCustosError(o) ? o.code : o.expose())),
      [pt, aad],
    );
    assert.equal((await ks.sign(signer, "ecdsa-p256-sha256", pt)).length, 64);
    assert.equal((await ks.hmac(mac, pt)).length, 32);
  }

  async function burst(n: number): Promise<Tally> {
    const tally: Tally = { ok: 0, unavailable: 0, other: [] };
    await Promise.all(
      Array.from({ length: n }, async (_, i) => {
        try {
          await request(i);
          tally.ok++;
        } catch (e) {
          if (isCustosError(e, "hsm_unavailable")) tally.unavailable++;
          else tally.other.push(e);
        }
      }),
    );
    return tally;
  }

  /** Calls `op` until it answers not_found; until then it may only succeed. */
  async function eventuallyNotFound(op: () => Promise<unknown>): Promise<void> {
    const until = Date.now() + 5000;
    for (;;) {
      try {
        await op();
      } catch (e) {
        if (isCustosError(e, "not_found")) return;
        throw e;
      }
      assert.ok(Date.now() < until, "a key deleted from the token was still used after 5 s");
      await sleep(100);
    }
  }

  async function waitForOk(maxMs: number): Promise<void> {
    const until = Date.now() + maxMs;
    while (ks.health().state !== "ok" && Date.now() < until) await sleep(100);
    assert.equal(ks.health().state, "ok", JSON.stringify(ks.health()));
  }

  async function assertAllSucceed(n: number): Promise<void> {
    const t = await burst(n);
    assert.deepEqual(t.other, []);
    assert.equal(t.unavailable, 0);
    assert.equal(t.ok, n);
  }

  test("baseline: everything works", async () => {
    await assertAllSucceed(20);
    assert.equal(ks.health().state, "ok");
  });

  test("C_CloseAllSessions under the pool, with requests in flight", async () => {
    const inFlight = burst(40);
    await sleep(0);
    inj.closeAllSessions();
    const t = await inFlight;
    // Recovery is possible at once, so nothing may fail.
    assert.deepEqual(t.other, []);
    assert.equal(t.ok, 40);
    inj.closeAllSessions();
    await assertAllSucceed(20);
    await waitForOk(3000);
    assert.ok(ks.health().recoveredAt);
  });

  test("C_Logout by someone else: re-login is transparent", async () => {
    inj.logout();
    await assertAllSucceed(20);
    const inFlight = burst(40);
    await sleep(0);
    inj.logout();
    const t = await inFlight;
    assert.deepEqual(t.other, []);
    assert.equal(t.ok, 40);
    await waitForOk(3000);
  });

  test("PIN changed under the keystore, then changed back", async () => {
    inj.changePin(token.pin, "temporary-pin-1");
    const during = await burst(5);
    assert.deepEqual(during.other, []);
    assert.equal(during.unavailable, 5, "nothing can succeed without a login");
    const h = ks.health();
    assert.equal(h.state, "unavailable");
    assert.equal(h.lastError, "CKR_PIN_INCORRECT");
    await assert.rejects(ks.random(8), (e: unknown) => isCustosError(e, "hsm_unavailable"));
    inj.changePin("temporary-pin-1", token.pin);
    await waitForOk(20_000);
    await assertAllSucceed(20);
  });

  test("token removed, then restored", async () => {
    const restore = inj.removeToken();
    let restored = false;
    try {
      const during = await burst(5);
      assert.deepEqual(during.other, []);
      assert.equal(during.ok + during.unavailable, 5);
      await assert.rejects(ks.findRootKey(), (e: unknown) => isCustosError(e, "hsm_unavailable"));
      assert.notEqual(ks.health().state, "ok");
      restore();
      restored = true;
    } finally {
      if (!restored) restore();
    }
    await waitForOk(10_000);
    await assertAllSucceed(20);
    assert.ok(await ks.findRootKey(), "the restored token brings the root key back");
  });

  test("token re-initialised: root key gone, keystore recovers and reports it", async () => {
    const before = await ks.findRootKey();
    assert.ok(before);
    token.reinitialize();
    // Nothing hangs; keys that needed the old root are unavailable, token keys that are
    // gone are not_found. A key still held in a session (an unwrapped key, or a session
    // copy of a token key, re-checked against the token every second) may finish work
    // until the keystore touches the token again.
    const during = await burst(5);
    for (const e of during.other) assert.ok(isCustosError(e, "not_found"), String(e));
    assert.equal(during.ok + during.unavailable + during.other.length, 5);
    await eventuallyNotFound(() => ks.sign(signer, "ecdsa-p256-sha256", Buffer.from("x")));
    await eventuallyNotFound(() => ks.hmac(mac, Buffer.from("x")));
    await waitForOk(10_000);
    assert.equal(await ks.findRootKey(), undefined);
    await assert.rejects(ks.encrypt(wrapped, Buffer.from("x"), Buffer.alloc(0)), (e: unknown) =>
      isCustosError(e, "hsm_unavailable"),
    );
    await assert.rejects(ks.generateWrappedAesKey(), (e: unknown) => isCustosError(e, "hsm_unavailable"));
    assert.equal((await ks.random(16)).length, 16);
    // The token is usable again from scratch, and the new root key is a different key.
    const fresh = await ks.createRootKey();
    assert.notEqual(fresh.checkValue, before.checkValue);
    wrapped = await ks.generateWrappedAesKey();
    signer = (await ks.generateKeyPair("ecdsa-p256", "fault-signer")).ref;
    mac = await ks.ensureHmacKey("fault-hmac");
    await assertAllSucceed(20);
    assert.equal(ks.health().state, "ok");
  });

  test("the PIN never reached a log line", () => {
    assert.ok(warnings.length > 0, "faults were logged");
    for (const w of warnings) assert.ok(!w.includes(token.pin) && !w.includes("temporary-pin-1"), w);
  });
});
