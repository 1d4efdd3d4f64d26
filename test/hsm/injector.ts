import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, renameSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import pkcs11js from "pkcs11js";
import type { TestToken } from "../helpers/softhsm.js";

/**
 * Fault injection from outside the keystore: a second pkcs11js handle in the test
 * process (PKCS#11 state is per application, so it acts on the keystore's sessions
 * and login) and the token directory on disk.
 */
export class Injector {
  readonly p: InstanceType<typeof pkcs11js.PKCS11>;
  readonly token: TestToken;

  constructor(token: TestToken) {
    this.token = token;
    this.p = new pkcs11js.PKCS11();
    this.p.load(token.modulePath);
    try {
      this.p.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
    } catch (e) {
      if (!String((e as Error).message).includes("CKR_CRYPTOKI_ALREADY_INITIALIZED")) throw e;
    }
  }

  slot(): Buffer {
    for (const s of this.p.C_GetSlotList(true)) {
      try {
        if (this.p.C_GetTokenInfo(s).label.trim() === this.token.label) return s;
      } catch {
        // stale slot
      }
    }
    throw new Error("token not found");
  }

  /** Runs `fn` on a fresh session of ours, closed afterwards. */
  withSession<T>(fn: (s: Buffer) => T): T {
    const s = this.p.C_OpenSession(this.slot(), pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
    try {
      return fn(s);
    } finally {
      try {
        this.p.C_CloseSession(s);
      } catch {
        // fine
      }
    }
  }

  /**
   * `value` as an AES key wrapped by the root key (RFC 5649), made from this second
   * handle: a wrapped key whose bytes the test knows, so node:crypto can check what
   * the keystore does with it.
   */
  wrapKnownKey(value: Buffer, rootLabel = "custos-root"): Buffer {
    return this.withSession((s) => {
      const p = this.p;
      p.C_FindObjectsInit(s, [{ type: pkcs11js.CKA_LABEL, value: rootLabel }]);
      const root = p.C_FindObjects(s);
      p.C_FindObjectsFinal(s);
      if (!root) throw new Error("no root key on the token");
      const k = p.C_CreateObject(s, [
        { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
        { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_AES },
        { type: pkcs11js.CKA_TOKEN, value: false },
        { type: pkcs11js.CKA_EXTRACTABLE, value: true },
        { type: pkcs11js.CKA_VALUE, value },
      ]);
      return Buffer.from(p.C_WrapKey(s, { mechanism: pkcs11js.CKM_AES_KEY_WRAP_PAD }, root, k, Buffer.alloc(64)));
    });
  }

  /**
   * A root key as Custos made them before root keys were hardened: on the token,
   * modifiable (the default), no unwrap template. Logs in for it if no one in this
   * process is, and then out again.
   */
  makeLegacyRootKey(label: string, id: Buffer): void {
    this.withSession((s) => {
      let loggedIn = false;
      try {
        this.p.C_Login(s, pkcs11js.CKU_USER, this.token.pin);
        loggedIn = true;
      } catch (e) {
        if (!String((e as Error).message).includes("CKR_USER_ALREADY_LOGGED_IN")) throw e;
      }
      try {
        this.p.C_GenerateKey(s, { mechanism: pkcs11js.CKM_AES_KEY_GEN }, [
          { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
          { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_AES },
          { type: pkcs11js.CKA_VALUE_LEN, value: 32 },
          { type: pkcs11js.CKA_TOKEN, value: true },
          { type: pkcs11js.CKA_PRIVATE, value: true },
          { type: pkcs11js.CKA_SENSITIVE, value: true },
          { type: pkcs11js.CKA_EXTRACTABLE, value: false },
          { type: pkcs11js.CKA_LABEL, value: label },
          { type: pkcs11js.CKA_ID, value: id },
          { type: pkcs11js.CKA_WRAP, value: true },
          { type: pkcs11js.CKA_UNWRAP, value: true },
          { type: pkcs11js.CKA_ENCRYPT, value: false },
          { type: pkcs11js.CKA_DECRYPT, value: false },
        ]);
      } finally {
        if (loggedIn) this.p.C_Logout(s);
      }
    });
  }

  closeAllSessions(): void {
    this.p.C_CloseAllSessions(this.slot());
  }

  logout(): void {
    this.withSession((s) => this.p.C_Logout(s));
  }

  /** Changes the user PIN (the application is logged in through the keystore) and logs out. */
  changePin(from: string, to: string): void {
    this.withSession((s) => {
      try {
        this.p.C_Login(s, pkcs11js.CKU_USER, from);
      } catch (e) {
        if (!String((e as Error).message).includes("CKR_USER_ALREADY_LOGGED_IN")) throw e;
      }
      this.p.C_SetPIN(s, from, to);
      this.p.C_Logout(s);
    });
  }

  /** Moves the token's directory away, as if the device were unplugged; returns a restore function. */
  removeToken(): () => void {
    const conf = readFileSync(process.env.SOFTHSM2_CONF ?? "", "utf8");
    const dir = /^\s*directories\.tokendir\s*=\s*(.+)$/m.exec(conf)?.[1]?.trim() ?? "";
    const mine = readdirSync(dir).find((d) =>
      readFileSync(join(dir, d, "token.object")).includes(Buffer.from(this.token.label)),
    );
    if (!mine) throw new Error("token directory not found");
    const away = mkdtempSync(join(tmpdir(), "custos-unplugged-"));
    renameSync(join(dir, mine), join(away, mine));
    return () => renameSync(join(away, mine), join(dir, mine));
  }

  /** Creates a token object with a known value (an oracle key the test knows). */
  createSecretKey(s: Buffer, keyType: number, value: Buffer, label: string, id: Buffer, uses: number[]): Buffer {
    return this.p.C_CreateObject(s, [
      { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
      { type: pkcs11js.CKA_KEY_TYPE, value: keyType },
      { type: pkcs11js.CKA_TOKEN, value: true },
      { type: pkcs11js.CKA_PRIVATE, value: true },
      { type: pkcs11js.CKA_LABEL, value: label },
      { type: pkcs11js.CKA_ID, value: id },
      { type: pkcs11js.CKA_VALUE, value },
      ...uses.map((type) => ({ type, value: true })),
    ]);
  }

  /** softhsm2-util in a child process, for faults that must come from another process. */
  static util(args: string[]): void {
    execFileSync("softhsm2-util", args, { stdio: "pipe" });
  }
}

/**
 * Runs `script` (an ES module's text) in a child node with tsx, passing the URLs of
 * `modules` (paths relative to test/hsm/) as its arguments: for faults that may crash
 * the process running them. Answers what it printed and how it ended ("" when it exited 0).
 */
export function runInChild(
  script: string,
  modules: readonly string[],
  timeoutMs = 240_000,
): { out: string; failure: string } {
  const urls = modules.map((path) => new URL(path, import.meta.url).href);
  try {
    const out = execFileSync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script, ...urls], {
      cwd: fileURLToPath(new URL("../..", import.meta.url)),
      encoding: "utf8",
      stdio: "pipe",
      timeout: timeoutMs,
    });
    return { out, failure: "" };
  } catch (e) {
    const err = e as { status?: number | null; signal?: string | null; stdout?: string };
    return { out: err.stdout ?? "", failure: `exit ${err.status} signal ${err.signal}` };
  }
}
