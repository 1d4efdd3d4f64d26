import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { type CustosInstance, startCustos } from "../helpers/custos.js";

/** Every encoding a leaked value could take in a file. */
function forms(value: Buffer): Buffer[] {
  return [
    value,
    Buffer.from(value.toString("base64")),
    Buffer.from(value.toString("base64url")),
    Buffer.from(value.toString("hex")),
  ].filter((b) => b.length >= 12);
}

describe("no secret reaches the database, its WAL or the logs", () => {
  let custos: CustosInstance;
  before(async () => {
    custos = await startCustos();
  });
  after(async () => {
    await custos?.dispose();
  });

  test("planted plaintexts, data keys, tokens and passwords are nowhere at rest", async () => {
    const planted: { what: string; value: Buffer }[] = [];
    const ok = (r: { status: number; text: string }) => {
      assert.ok(r.status < 300, r.text);
      return JSON.parse(r.text) as Record<string, unknown>;
    };

    ok(await custos.call("POST", "/v1/keys", { name: "scan", purpose: "encrypt" }));
    const plaintext = Buffer.from(`PLANTED-PLAINTEXT-${randomBytes(8).toString("hex")}`);
    planted.push({ what: "plaintext", value: plaintext });
    const enc = ok(
      await custos.call("POST", "/v1/keys/scan/encrypt", {
        plaintext: plaintext.toString("base64"),
        context: { a: "b" },
      }),
    );
    ok(await custos.call("POST", "/v1/keys/scan/decrypt", { ciphertext: enc.ciphertext, context: { a: "b" } }));

    for (let i = 0; i < 3; i++) {
      const dk = ok(await custos.call("POST", "/v1/keys/scan/datakey", { context: { n: String(i) } }));
      planted.push({ what: "data key", value: Buffer.from(dk.plaintext as string, "base64") });
    }
    const batch = ok(await custos.call("POST", "/v1/keys/scan/datakey", { items: [{}, {}] }));
    for (const item of batch.items as { plaintext: string }[]) {
      planted.push({ what: "batch data key", value: Buffer.from(item.plaintext, "base64") });
    }

    const password = `planted-password-${randomBytes(6).toString("hex")}`;
    planted.push({ what: "password", value: Buffer.from(password) });
    ok(await custos.call("POST", "/v1/users", { name: "scanner", password, policies: [] }));
    const login = ok(await custos.call("POST", "/v1/auth/login", { username: "scanner", password }, null));
    planted.push({ what: "session token", value: Buffer.from(login.token as string) });
    // A failed login carries a password too: it must not be logged either.
    const wrongPassword = `planted-wrong-${randomBytes(6).toString("hex")}`;
    planted.push({ what: "wrong password", value: Buffer.from(wrongPassword) });
    assert.equal(
      (await custos.call("POST", "/v1/auth/login", { username: "scanner", password: wrongPassword }, null)).status,
      401,
    );

    const api = ok(await custos.call("POST", "/v1/auth/tokens", { name: "ci" }));
    planted.push({ what: "api token", value: Buffer.from(api.token as string) });
    planted.push({ what: "admin token", value: Buffer.from(custos.adminToken) });
    // Use the API token so it passes through authentication (and any logging on that path).
    assert.equal((await custos.call("GET", "/v1/auth/whoami", undefined, api.token as string)).status, 200);

    const random = ok(await custos.call("POST", "/v1/random", { bytes: 32 }));
    planted.push({ what: "random bytes", value: Buffer.from(random.random as string, "base64") });

    // Scan while the server runs (WAL not yet checkpointed) and again after a clean stop.
    const files = ["custos.db", "custos.db-wal", "server.log"].map((f) => join(custos.dir, f));
    const scan = () => {
      for (const file of files.filter(existsSync)) {
        const bytes = readFileSync(file);
        for (const { what, value } of planted) {
          for (const form of forms(value)) {
            assert.equal(bytes.indexOf(form), -1, `${what} found in ${file}`);
          }
        }
      }
    };
    assert.ok(existsSync(files[0]!) && existsSync(files[2]!), "the database and the log exist");
    assert.ok(readFileSync(files[2]!).length > 0, "the server logged something");
    scan();
    await custos.stop();
    scan();
  });
});
