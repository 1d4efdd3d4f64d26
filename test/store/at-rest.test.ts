import assert from "node:assert/strict";
import { createHash, createHmac, randomBytes } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { after, test } from "node:test";
import { SqliteStore } from "../../src/store/index.js";
import { aesVersion, entry, keyRecord, tempDir, tokenRecord, userRecord } from "./helpers.js";

const tmp = tempDir();
after(() => tmp.remove());

function filesOf(path: string): Buffer {
  return Buffer.concat([path, `${path}-wal`].filter(existsSync).map((f) => readFileSync(f)));
}

test("the database and WAL hold what callers give (HMACs, hashes, wrapped keys), never the secret behind them", async () => {
  const path = tmp.path("at-rest.db");
  const store = await SqliteStore.open(path);
  const secret = `custos_tok_${randomBytes(24).toString("hex")}`;
  const hmac = `hmac-sha256:${createHmac("sha256", randomBytes(32)).update(secret).digest("hex")}`;
  const tokenHash = createHash("sha256").update(secret).digest("hex");
  const owner = userRecord("owner");
  await store.createUser(owner, entry("user.create"));
  await store.createToken(
    tokenRecord(owner.id, { hash: tokenHash }),
    entry("token.create", { details: { token: hmac, name: "ci" } }),
  );
  const key = keyRecord("at-rest");
  const version = aesVersion(key.id, 1);
  await store.createKey(key, version, entry("key.create"));

  const live = filesOf(path);
  assert.ok(existsSync(`${path}-wal`), "writes are in the WAL while the store is open");
  assert.ok(live.includes(hmac), "the HMAC the caller passed is stored (so this scan can see values)");
  assert.ok(live.includes(tokenHash), "the token hash is stored");
  assert.ok(live.includes(version.wrappedKey!), "the wrapped key is stored as given");
  assert.ok(!live.includes(secret), "the secret itself is nowhere in the database or WAL");
  assert.ok(!live.includes(Buffer.from(secret, "utf16le")));

  await store.close();
  const closed = filesOf(path);
  assert.ok(closed.includes(hmac));
  assert.ok(!closed.includes(secret));
});

test("a deleted user's password hash does not linger in the database file (secure_delete)", async () => {
  const path = tmp.path("secure-delete.db");
  const store = await SqliteStore.open(path);
  const marker = `$argon2id$v=19$m=65536,t=3,p=4$${randomBytes(16).toString("base64")}`;
  const user = userRecord("leaving", { passwordHash: marker });
  await store.createUser(user, entry("user.create"));
  await store.close();
  assert.ok(readFileSync(path).includes(marker), "the hash was written to the file");

  const again = await SqliteStore.open(path);
  await again.deleteUser(user.id, entry("user.delete"));
  await again.close();
  assert.ok(!filesOf(path).includes(marker), "deleted content is zeroed, not left in free pages");
});
