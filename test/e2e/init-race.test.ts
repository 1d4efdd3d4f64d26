import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { test } from "node:test";
import Database from "better-sqlite3";
import { createTestToken, tokenObjectLabels } from "../helpers/softhsm.js";

/**
 * `custos init` run several times at once on one fresh store and token, as replicas
 * of a deployment starting together would. PKCS#11 can't referee this (a SoftHSM
 * process that has just made a key misses one another process made meanwhile, so
 * racing creators both kept theirs): inits on one store take turns.
 */

const BIN = resolve(import.meta.dirname, "../../bin/custos.js");

function init(env: NodeJS.ProcessEnv, cwd: string): Promise<{ code: number | null; out: string }> {
  return new Promise((done) => {
    const child = spawn(process.execPath, [BIN, "init"], { env, cwd, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    child.stdout.on("data", (chunk: Buffer) => {
      out += chunk.toString("utf8");
    });
    child.stderr.on("data", (chunk: Buffer) => {
      out += chunk.toString("utf8");
    });
    child.once("exit", (code) => done({ code, out }));
  });
}

test("five custos init at once on a fresh store and token: one initialises, the rest find it done, one root key on the token", async () => {
  for (let round = 0; round < 2; round++) {
    const token = createTestToken("custos-init-race");
    const dir = mkdtempSync(join(tmpdir(), "custos-init-race-"));
    try {
      const { CUSTOS_CONFIG: _config, CUSTOS_HSM_PIN_FILE: _pinFile, ...inherited } = process.env;
      const env = {
        ...inherited,
        CUSTOS_DATA_DIR: join(dir, "data"),
        CUSTOS_HSM_TOKEN: token.label,
        CUSTOS_HSM_PIN: token.pin,
      };
      const runs = await Promise.all(Array.from({ length: 5 }, () => init(env, dir)));
      // On a failure, every init's output: the one that went wrong may not be the one that failed.
      const all = runs.map((r, i) => `init ${i + 1} (exit ${r.code}):\n${r.out}`).join("\n");
      for (const r of runs) assert.equal(r.code, 0, all);
      const made = runs.filter((r) => /^initialized$/m.test(r.out));
      const found = runs.filter((r) => /^already initialized/m.test(r.out));
      assert.equal(made.length, 1, `round ${round}: ${runs.map((r) => r.out.split("\n")[0]).join(" | ")}`);
      assert.equal(found.length, 4);

      assert.deepEqual(
        tokenObjectLabels(token, "secrkey").filter((label) => label === "custos-root"),
        ["custos-root"],
        `round ${round}: root keys on the token`,
      );
      const db = new Database(join(dir, "data", "custos.db"), { readonly: true });
      try {
        const admins = db.prepare("SELECT COUNT(*) AS n FROM users").get() as { n: number };
        assert.equal(admins.n, 1, "one first admin");
      } finally {
        db.close();
      }
      // And the next init checks the one root key against the store.
      const again = await init(env, dir);
      assert.equal(again.code, 0, again.out);
      assert.match(again.out, /^already initialized \(root key checked/m);
    } finally {
      token.remove();
      rmSync(dir, { recursive: true, force: true });
    }
  }
});
