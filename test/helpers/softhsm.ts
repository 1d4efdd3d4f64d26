import { execFileSync } from "node:child_process";
import { randomBytes, randomUUID } from "node:crypto";
import { existsSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** Where Debian's softhsm2 package puts the PKCS#11 module. */
export const SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so";

export interface TestToken {
  readonly modulePath: string;
  readonly label: string;
  readonly pin: string;
  readonly soPin: string;
  /** Deletes the token (as an operator would remove it). */
  remove(): void;
  /** Re-initialises the token in place (all objects gone, same label and PINs). */
  reinitialize(): void;
}

function softhsmConfTokenDir(): string {
  const conf = process.env.SOFTHSM2_CONF;
  if (!conf) {
    throw new Error("SOFTHSM2_CONF is not set: run tests through scripts/with-softhsm.sh (npm test does)");
  }
  const match = /^\s*directories\.tokendir\s*=\s*(.+)$/m.exec(readFileSync(conf, "utf8"));
  if (!match?.[1]) throw new Error(`no directories.tokendir in ${conf}`);
  return match[1].trim();
}

/**
 * A fresh SoftHSM token with a unique label and random PINs, in the per-run token
 * directory that `scripts/with-softhsm.sh` made. Each test file makes its own.
 */
export function createTestToken(prefix = "custos-test"): TestToken {
  if (!existsSync(SOFTHSM_MODULE))
    throw new Error(`SoftHSM module missing at ${SOFTHSM_MODULE}: apt-get install softhsm2`);
  softhsmConfTokenDir();
  const label = `${prefix}-${randomUUID().slice(0, 8)}`;
  const pin = randomBytes(8).toString("hex");
  const soPin = randomBytes(8).toString("hex");
  const init = (): void => {
    execFileSync("softhsm2-util", ["--init-token", "--free", "--label", label, "--pin", pin, "--so-pin", soPin], {
      stdio: "pipe",
    });
  };
  init();
  return {
    modulePath: SOFTHSM_MODULE,
    label,
    pin,
    soPin,
    remove() {
      execFileSync("softhsm2-util", ["--delete-token", "--token", label], { stdio: "pipe" });
    },
    reinitialize() {
      execFileSync("softhsm2-util", ["--delete-token", "--token", label], { stdio: "pipe" });
      init();
    },
  };
}

/**
 * Moves the token's directory out of SoftHSM's token directory, as if the HSM were
 * unplugged while a server uses it; returns the function that plugs it back.
 */
export function unplugToken(label: string): () => void {
  const dir = softhsmConfTokenDir();
  const mine = readdirSync(dir).find((d) => readFileSync(join(dir, d, "token.object")).includes(Buffer.from(label)));
  if (!mine) throw new Error(`no token directory holds ${label}`);
  const away = mkdtempSync(join(tmpdir(), "custos-unplugged-"));
  renameSync(join(dir, mine), join(away, mine));
  return () => {
    renameSync(join(away, mine), join(dir, mine));
    rmSync(away, { recursive: true, force: true });
  };
}

/**
 * Labels of the objects on `token` (only those of `type` when given), as pkcs11-tool
 * lists them after a login with the user PIN: an oracle outside our code.
 */
export function tokenObjectLabels(token: TestToken, type?: "privkey" | "pubkey" | "secrkey" | "data"): string[] {
  const out = execFileSync(
    "pkcs11-tool",
    [
      ...["--module", token.modulePath, "--token-label", token.label, "--login", "--pin", token.pin],
      "--list-objects",
      ...(type === undefined ? [] : ["--type", type]),
    ],
    { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] },
  );
  return [...out.matchAll(/label:\s+(\S+)/g)].map((m) => m[1] ?? "");
}
