import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { after, test } from "node:test";
import { loadConfig } from "../../src/config/index.js";
import { createLogger } from "../../src/log/index.js";
import { initialize, openServices } from "../../src/main.js";
import { createTestToken, type TestToken } from "../helpers/softhsm.js";
import { Injector } from "../hsm/injector.js";

/**
 * A store initialised over a root key an older Custos made (modifiable, no unwrap
 * template) still starts, and says at start-up that its root key is not hardened; a
 * store with a root key made now starts without that warning.
 */

// SoftHSM only sees tokens that existed when the library was initialised in this process.
const fresh = createTestToken("custos-root-new");
const legacy = createTestToken("custos-root-old");
const dirs: string[] = [];

after(() => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
  fresh.remove();
  legacy.remove();
});

/** Initialises a store on `token` and opens its services; returns what they logged at warn and above. */
async function startupWarnings(token: TestToken): Promise<string[]> {
  const dir = mkdtempSync(join(tmpdir(), "custos-root-"));
  dirs.push(dir);
  writeFileSync(join(dir, "hsm.pin"), token.pin, { mode: 0o600 });
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    CUSTOS_DATA_DIR: dir,
    CUSTOS_HSM_TOKEN: token.label,
    CUSTOS_HSM_PIN_FILE: join(dir, "hsm.pin"),
  };
  await initialize(loadConfig({ env }), { adminName: "admin" });
  const lines: string[] = [];
  const destination = new Writable({
    write(chunk: Buffer, _encoding, done) {
      lines.push(...chunk.toString("utf8").split("\n").filter(Boolean));
      done();
    },
  });
  const services = await openServices(loadConfig({ env }), createLogger({ destination, level: "warn" }));
  await services.close();
  return lines.map((line) => (JSON.parse(line) as { msg: string }).msg);
}

test("a root key made before root keys were hardened is used, with a warning at start-up; a new one starts quietly", async () => {
  new Injector(legacy).makeLegacyRootKey("custos-root", Buffer.alloc(16, 7));
  const warned = (await startupWarnings(legacy)).filter((msg) => msg.includes("root key"));
  assert.equal(warned.length, 1, "one warning");
  assert.match(warned[0] ?? "", /made before root keys were hardened/);

  const quiet = (await startupWarnings(fresh)).filter((msg) => msg.includes("root key"));
  assert.deepEqual(quiet, []);
});
