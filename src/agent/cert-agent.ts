/**
 * The certificate agent: keeps one TLS endpoint (an nginx, say) serving its
 * consumer's target certificate, and tells Custos what it serves, so a rotation
 * is known to be complete only once every endpoint really presents the new
 * certificate (docs/pki.md, "The agent").
 *
 * Custos is told a fingerprint only after the files are in place, the reload
 * command succeeded and, with a check address, a TLS handshake presented it: a
 * report is a statement about what clients see, never about what was intended.
 */
import { spawn } from "node:child_process";
import { createHash, createPrivateKey, X509Certificate } from "node:crypto";
import { readdir, readFile, rm } from "node:fs/promises";
import { isIP } from "node:net";
import { basename, dirname, join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { connect } from "node:tls";
import { ClientError, type CustosClient } from "../client/index.js";
import { messageOf } from "../errors/index.js";
import {
  writeFileAtomic as durableWrite,
  type FileChange,
  replaceFiles,
  replaceFilesUndoably,
  syncPath,
} from "../files/index.js";
import { Secret } from "../secret/index.js";

/** Where `--check` connects, and the name it asks for. */
export interface CheckTarget {
  readonly host: string;
  readonly port: number;
  /** SNI name; by default the certificate's first DNS name that is not a wildcard. */
  readonly servername?: string | undefined;
}

/** What one agent serves, and how. */
export interface CertAgentOptions {
  /** The consumer whose certificate this endpoint serves. */
  readonly consumer: string;
  /** The role the consumer must be issued under; Custos answers `conflict` otherwise. */
  readonly role: string;
  /** This agent's id in the consumer's status (the host name, usually). */
  readonly agentId: string;
  /**
   * Leaf followed by the chain, as nginx's `ssl_certificate` wants. The agent keeps
   * its state (the fingerprint it confirmed served) beside it, suffixed `STATE_SUFFIX`.
   */
  readonly certFile: string;
  /** The private key, PKCS#8 PEM, mode 0600. */
  readonly keyFile: string;
  /** The issuing intermediate alone (for `ssl_trusted_certificate`, OCSP stapling). */
  readonly chainFile: string;
  /** Run by `/bin/sh -c` after the files changed; must exit 0. */
  readonly reloadCommand: string;
  /** Pause between rounds. */
  readonly intervalMs: number;
  /** Longest the reload command may run before it is killed. Default 60 s. */
  readonly reloadTimeoutMs?: number | undefined;
  /** When given, a change counts as served only once a handshake here presents it. */
  readonly check?: CheckTarget | undefined;
  /** Longest to wait for the check to present the new certificate. Default 30 s. */
  readonly checkTimeoutMs?: number | undefined;
  /** The agent's clock: what `renewAt` and the certificate's validity are compared with (tests move it). */
  readonly now?: (() => number) | undefined;
}

/** How bad a log line is. */
export type AgentLogLevel = "info" | "error";

/** Where the agent's one-line events go. Messages never hold key material. */
export type AgentLog = (level: AgentLogLevel, message: string) => void;

/**
 * The agent's own failures (the API's come as `ClientError`):
 * - `reload_failed`: the reload command exited non-zero, was killed, or could not start;
 * - `check_failed`: the check address did not present the new certificate in time;
 * - `invalid_material`: Custos's answer is unusable (key does not match, wrong fingerprint);
 * - `io_error`: the files could not be read or written.
 */
export type CertAgentErrorCode = "reload_failed" | "check_failed" | "invalid_material" | "io_error";

/** A failure of the agent's own work; the round fails and is tried again after the interval. */
export class CertAgentError extends Error {
  readonly code: CertAgentErrorCode;

  constructor(code: CertAgentErrorCode, message: string, options: { cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "CertAgentError";
    this.code = code;
  }
}

/** What a round ended with. */
export interface RoundResult {
  /** The target generation Custos named. */
  readonly generation: number;
  /** The fingerprint the endpoint serves and that was reported. */
  readonly fingerprint: string;
  /** True when new material was written and reloaded this round. */
  readonly changed: boolean;
  /** True when this round asked Custos to renew. */
  readonly renewed: boolean;
}

interface MaterialHead {
  readonly generation: number;
  readonly serial: string;
  readonly fingerprint: string;
  readonly notAfter: string;
  readonly renewAt: string;
}

interface FullMaterial extends MaterialHead {
  readonly certificate: string;
  readonly chain: string;
  readonly privateKey: Secret;
}

type Material = (MaterialHead & { readonly unchanged: true }) | FullMaterial;

/** What a pass ended with: what is served and reported, or a target too old to install (nothing reported). */
type Pass =
  | { readonly generation: number; readonly served: string; readonly changed: boolean; readonly due: boolean }
  | { readonly expired: string; readonly target: string };

const DEFAULT_RELOAD_TIMEOUT_MS = 60_000;
const DEFAULT_CHECK_TIMEOUT_MS = 30_000;
/**
 * Consecutive handshakes that must present the new certificate: right after a
 * graceful reload, old nginx workers may still accept a connection or two.
 */
const CHECK_CONFIRMATIONS = 2;
const CHECK_PAUSE_MS = 200;
const HANDSHAKE_TIMEOUT_MS = 5_000;
const RELOAD_OUTPUT_LIMIT = 2048;

/**
 * Appended to the certificate file's path to name the agent's state file: the
 * fingerprint it last confirmed served (reload succeeded, check passed). The files
 * alone can't say that: they are written before the reload that may fail.
 */
export const STATE_SUFFIX = ".custos-served";

/**
 * The agent ids Custos accepts (src/pki/consumers.ts), checked before the first
 * fetch: an id refused only by the report would come after the files were written
 * and reloaded. A copy, since this client-side module does not import the server's.
 */
const AGENT_ID = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;

/** The rule `AGENT_ID` enforces, for error messages. */
export const AGENT_ID_RULE = "1-128 letters, digits and . _ : -, starting with a letter or digit";

/** Whether Custos accepts `id` as an agent id. */
export function isAgentId(id: string): boolean {
  return AGENT_ID.test(id);
}

/**
 * The longest a Node timer waits (2^31-1 ms, 24.8 days): a longer delay fires
 * after 1 ms, so longer pauses are taken in pieces.
 */
const MAX_TIMER_MS = 2 ** 31 - 1;

const PEM_END = "-----END CERTIFICATE-----";

/**
 * The temporary files `src/files` made beside `path` (`.<name>.<12 hex>.tmp`) and a
 * stopped agent left: new contents not yet renamed, or copies of the old.
 */
async function leftoversOf(path: string): Promise<string[]> {
  const name = basename(path);
  let entries: string[];
  try {
    entries = await readdir(dirname(path));
  } catch (e) {
    if (errnoOf(e) === "ENOENT") return [];
    throw new CertAgentError("io_error", `cannot list ${dirname(path)}: ${messageOf(e)}`, { cause: e });
  }
  return entries
    .filter((e) => e.startsWith(`.${name}.`) && /^[0-9a-f]{12}\.tmp$/.test(e.slice(name.length + 2)))
    .map((e) => join(dirname(path), e));
}

/** Whether `keyPem` is the private key of `leaf`. */
function matches(leaf: X509Certificate, keyPem: Buffer): boolean {
  try {
    return leaf.checkPrivateKey(createPrivateKey(keyPem));
  } catch {
    return false;
  }
}

/** What the files hold, for a log line. */
function filesHold(onDisk: { fingerprint: string } | undefined): string {
  return onDisk === undefined ? "the files are not a usable pair" : `the files hold ${short(onDisk.fingerprint)}`;
}

/** SHA-256 of a certificate's DER, lowercase hex: how Custos names certificates. */
export function fingerprintOf(cert: X509Certificate): string {
  return createHash("sha256").update(cert.raw).digest("hex");
}

/**
 * Keeps one endpoint's certificate files equal to its consumer's target. `round()`
 * does one fetch-write-reload-check-report pass; `runCertAgent` loops over rounds.
 */
export class CertAgent {
  readonly #client: CustosClient;
  readonly #options: CertAgentOptions;
  readonly #log: AgentLog;
  readonly #now: () => number;
  #served: string | undefined;
  #accepted = false;
  /**
   * Set when the files are not known to hold `#served`'s pair (a replacement failed,
   * or an agent stopped mid-change): they are written again even if `#served` is the
   * target, and a failed install has no served files to put back.
   */
  #rewrite = false;

  /** Builds an agent; `init()` must run before the first round. */
  constructor(client: CustosClient, options: CertAgentOptions, log: AgentLog) {
    if (!Number.isFinite(options.intervalMs) || options.intervalMs <= 0) {
      throw new RangeError(`intervalMs must be a positive number, got ${options.intervalMs}`);
    }
    if (!isAgentId(options.agentId)) {
      throw new RangeError(`agentId "${options.agentId}" is not an agent id Custos accepts: ${AGENT_ID_RULE}`);
    }
    this.#client = client;
    this.#options = options;
    this.#log = log;
    this.#now = options.now ?? Date.now;
  }

  /** The fingerprint this agent believes the endpoint serves, if any. */
  get served(): string | undefined {
    return this.#served;
  }

  /** True once Custos has answered a fetch: from then on its refusals are retried, not fatal. */
  get accepted(): boolean {
    return this.#accepted;
  }

  /**
   * Learns what the endpoint serves from the files already in place, so a restarted
   * agent neither rewrites nor reloads what is current. The files count only when
   * cert, chain and key are all there, the key matches, and the state file says the
   * agent itself confirmed that certificate served: files written before a reload
   * that failed (by an agent that then stopped) or put there by someone else are
   * not taken as served. With a check address the handshake has the last word.
   *
   * An agent stopped in the middle of a change (killed during its reload) leaves the
   * new files in place and its copies of the served ones beside them: the pair the
   * state file names is put back from those copies, so a failed reload later has
   * that pair to go back to, and the copies (one holds a private key) are removed.
   * Without the copies, a check that still presents the state file's certificate
   * makes it what is served and reported, the files to be written whole next round.
   */
  async init(signal?: AbortSignal): Promise<void> {
    const confirmed = await this.#readState();
    let onDisk = await this.#readServed();
    if (confirmed !== undefined && onDisk?.fingerprint !== confirmed && (await this.#putBackServed(confirmed))) {
      onDisk = await this.#readServed();
    }
    await this.#removeLeftovers();
    if (onDisk === undefined && confirmed === undefined) {
      this.#log("info", "no usable certificate files yet: the first round writes them");
      return;
    }
    const trusted = onDisk !== undefined && onDisk.fingerprint === confirmed;
    const check = this.#options.check;
    if (check === undefined || confirmed === undefined) {
      if (onDisk !== undefined && trusted) {
        this.#served = onDisk.fingerprint;
        this.#log("info", `serving ${short(onDisk.fingerprint)} (from the files)`);
      } else {
        this.#log("info", `${filesHold(onDisk)}, not known to be served: rewriting them`);
      }
      return;
    }
    const servername = check.servername ?? (onDisk === undefined ? undefined : defaultServername(onDisk.cert));
    let presented: string;
    try {
      presented = await presentedFingerprint(check, servername, HANDSHAKE_TIMEOUT_MS, signal);
    } catch (e) {
      this.#log("info", `${addressOf(check)} cannot be checked (${messageOf(e)}): rewriting the files`);
      return;
    }
    if (onDisk !== undefined && trusted && presented === onDisk.fingerprint) {
      this.#served = onDisk.fingerprint;
      this.#log("info", `serving ${short(onDisk.fingerprint)} (from the files)`);
      return;
    }
    if (presented === confirmed) {
      // Still what clients see, and what the agent confirmed: report it (holding a
      // rotation open) rather than nothing, and write the files whole next round.
      this.#served = confirmed;
      this.#rewrite = true;
      this.#log(
        "info",
        `${addressOf(check)} presents ${short(confirmed)}, served before a change that did not finish, though ${filesHold(onDisk)}: rewriting them`,
      );
      return;
    }
    this.#log(
      "info",
      `${addressOf(check)} presents ${short(presented)}, not ${short(confirmed)} last confirmed served (${filesHold(onDisk)}): rewriting them`,
    );
  }

  /**
   * Puts the pair `fingerprint` names back in place from the copies a stopped agent
   * left beside the files (`replaceFilesUndoably`'s), when its certificate and a
   * matching key are among them; the chain is the certificate file's tail.
   * @returns true when the files hold that pair again.
   */
  async #putBackServed(fingerprint: string): Promise<boolean> {
    const { certFile, keyFile, chainFile } = this.#options;
    let found: { text: string; leaf: X509Certificate; chain: string } | undefined;
    for (const path of [certFile, ...(await leftoversOf(certFile))]) {
      const text = await readFile(path, "utf8").catch(() => "");
      const end = text.indexOf(PEM_END);
      try {
        const leaf = new X509Certificate(text);
        const chain = text.slice(end + PEM_END.length).replace(/^\r?\n/, "");
        if (fingerprintOf(leaf) === fingerprint && leaf.checkIssued(new X509Certificate(chain))) {
          found = { text, leaf, chain };
          break;
        }
      } catch {
        // Not a certificate file of the agent's: look further.
      }
    }
    if (found === undefined) return false;
    for (const path of [keyFile, ...(await leftoversOf(keyFile))]) {
      const key = await readFile(path).catch(() => undefined);
      if (key === undefined) continue;
      try {
        if (!matches(found.leaf, key)) continue;
        await replaceFiles([
          { path: keyFile, data: key, mode: 0o600 },
          { path: chainFile, data: found.chain, mode: 0o644 },
          { path: certFile, data: found.text, mode: 0o644 },
        ]);
      } catch (e) {
        throw new CertAgentError("io_error", `cannot put the served certificate files back: ${messageOf(e)}`, {
          cause: e,
        });
      } finally {
        key.fill(0);
      }
      this.#log(
        "info",
        `put back the files of ${short(fingerprint)}, left beside them by a change that did not finish`,
      );
      return true;
    }
    return false;
  }

  /**
   * Removes the temporary files a stopped agent left beside its own files (a copy
   * of the key among them): no change of this agent is under way before `init` ends.
   */
  async #removeLeftovers(): Promise<void> {
    const { certFile, keyFile, chainFile } = this.#options;
    const paths = [certFile, keyFile, chainFile, this.#stateFile()];
    const leftovers = (await Promise.all(paths.map(leftoversOf))).flat();
    if (leftovers.length === 0) return;
    try {
      await Promise.all(leftovers.map((path) => rm(path, { force: true })));
      // Durably gone: one may be a copy of a private key.
      for (const dir of new Set(leftovers.map(dirname))) await syncPath(dir);
    } catch (e) {
      throw new CertAgentError("io_error", `cannot remove leftover temporary files: ${messageOf(e)}`, { cause: e });
    }
    this.#log("info", `removed ${leftovers.length} temporary files a stopped agent left`);
  }

  /**
   * One pass: fetch the target (`known` = what is served), put new material in
   * place, report what is served, and renew when the target's `renewAt` has passed.
   * A failed write, reload or check leaves the served fingerprint as it was; that
   * one is still reported (it is the truth), then the round fails. An expired target
   * is never installed: the agent asks for its renewal first and installs the
   * renewed certificate, or fails the round leaving the files in place.
   * @throws ClientError from the API, CertAgentError from the agent's own work.
   */
  async round(signal?: AbortSignal): Promise<RoundResult> {
    const first = await this.#pass(signal);
    if ("expired" in first) {
      if (!(await this.#renew(first.target, signal))) {
        // Not reported either: Custos renews only a target every live agent serves,
        // and a report of the older certificate would keep this agent live and not
        // serving it. Left stale, it stops holding the renewal back.
        throw new CertAgentError(
          "invalid_material",
          `${first.expired}, and Custos renewed nothing: the files in place stay, unreported`,
        );
      }
      return { ...(await this.#renewedPass(signal)), renewed: true };
    }
    if (!first.due) {
      return { generation: first.generation, fingerprint: first.served, changed: first.changed, renewed: false };
    }
    if (!(await this.#renew(first.served, signal))) {
      return { generation: first.generation, fingerprint: first.served, changed: first.changed, renewed: true };
    }
    const second = await this.#renewedPass(signal);
    return { ...second, changed: first.changed || second.changed, renewed: true };
  }

  /**
   * Asks Custos to renew the target `fingerprint`.
   * @returns true when the target moved on (renewed by this agent or another).
   */
  async #renew(fingerprint: string, signal: AbortSignal | undefined): Promise<boolean> {
    signal?.throwIfAborted();
    const answer = await abortable(
      this.#client.request<{ consumer?: { target?: { fingerprint?: unknown } } }>(
        "POST",
        `${this.#consumerPath()}/renew`,
        { body: { fingerprint } },
      ),
      signal,
    );
    const target = answer.consumer?.target?.fingerprint;
    if (typeof target !== "string" || target === fingerprint) {
      this.#log("info", `renewal asked; the target is still ${short(fingerprint)}`);
      return false;
    }
    this.#log("info", `renewed: the target is now ${short(target)}`);
    return true;
  }

  /** The pass after a renewal: its target is fresh, so an expired one is an error, not a reason to renew again. */
  async #renewedPass(
    signal: AbortSignal | undefined,
  ): Promise<{ generation: number; fingerprint: string; changed: boolean }> {
    const pass = await this.#pass(signal);
    if ("expired" in pass) throw new CertAgentError("invalid_material", `${pass.expired}, though just renewed`);
    return { generation: pass.generation, fingerprint: pass.served, changed: pass.changed };
  }

  async #pass(signal: AbortSignal | undefined): Promise<Pass> {
    const material = await this.#fetch(signal);
    let changed = false;
    let expired: string | undefined;
    let failure: unknown;
    try {
      if ("privateKey" in material && (material.fingerprint !== this.#served || this.#rewrite)) {
        const checked = checkMaterial(material, this.#now());
        if (checked.expired) {
          expired = `${nameOf(material)} expired at ${checked.leaf.validTo}`;
        } else {
          await this.#apply(material, checked, signal);
          changed = true;
        }
      }
    } catch (e) {
      failure = e;
    } finally {
      if ("privateKey" in material) material.privateKey.destroy();
    }
    if (expired !== undefined) {
      this.#log("info", `${expired}: not installed; asking Custos to renew it`);
      return { expired, target: material.fingerprint };
    }
    const served = this.#served;
    if (served !== undefined && !signal?.aborted) {
      await this.#report(served, signal);
      if (failure !== undefined) this.#log("info", `reported ${short(served)}, which is still what is served`);
    }
    if (failure !== undefined) throw failure;
    if (served === undefined) {
      // Only reachable when the answer was "unchanged" for a fingerprint not sent.
      throw new CertAgentError("invalid_material", "Custos answered unchanged, but nothing is served yet");
    }
    this.#log(
      "info",
      `${changed ? "reported" : "unchanged, reported"}: generation ${material.generation} (${short(served)})`,
    );
    const renewAt = Date.parse(material.renewAt);
    return {
      generation: material.generation,
      served,
      changed,
      due: Number.isFinite(renewAt) && this.#now() >= renewAt,
    };
  }

  async #fetch(signal: AbortSignal | undefined): Promise<Material> {
    signal?.throwIfAborted();
    let body: unknown;
    try {
      body = await abortable(
        this.#client.request("GET", `${this.#consumerPath()}/certificate`, {
          query: { role: this.#options.role, known: this.#rewrite ? undefined : this.#served },
        }),
        signal,
      );
    } catch (e) {
      throw e instanceof ClientError ? explainRefusal(e, this.#options) : e;
    }
    this.#accepted = true;
    return parseMaterial(body);
  }

  /**
   * Installs the material: files, reload, check. When the reload or the check fails
   * and a pair was being served, its files are put back, and a reload that had
   * succeeded is run again, so the files on disk are again the pair the endpoint
   * serves (and would serve after a restart), never the refused one. With nothing
   * served yet there is nothing to go back to: the new files stay, for the endpoint
   * to start on, and are not taken as served until a reload succeeds.
   */
  async #apply(material: FullMaterial, checked: CheckedMaterial, signal: AbortSignal | undefined): Promise<void> {
    const { leaf, certPem, chainPem } = checked;
    this.#log("info", `${nameOf(material)} to install`);
    signal?.throwIfAborted();
    // Whether the files about to be replaced are the served pair, to go back to.
    const restorable = this.#served !== undefined && !this.#rewrite;
    const change = await this.#replace(material.privateKey, certPem, chainPem);
    let reloaded = false;
    try {
      // A stop during the reload kills it: the files go back, and nothing waits out its timeout.
      await this.#reload(signal);
      reloaded = true;
      const check = this.#options.check;
      if (check !== undefined) {
        const servername = check.servername ?? defaultServername(leaf);
        await waitUntilPresented(
          check,
          servername,
          material.fingerprint,
          this.#options.checkTimeoutMs ?? DEFAULT_CHECK_TIMEOUT_MS,
          signal,
        );
        this.#log("info", `${addressOf(check)} presents ${short(material.fingerprint)}`);
      }
    } catch (e) {
      await this.#rollBack(change, reloaded, restorable);
      throw e;
    }
    await change
      .keep()
      .catch((e: unknown) => this.#log("error", `cannot remove the copies of the old files: ${messageOf(e)}`));
    this.#served = material.fingerprint;
    await writeFileAtomic(this.#stateFile(), Buffer.from(`${material.fingerprint}\n`, "utf8"), 0o644);
  }

  async #reload(signal?: AbortSignal): Promise<void> {
    await runReload(this.#options.reloadCommand, this.#options.reloadTimeoutMs ?? DEFAULT_RELOAD_TIMEOUT_MS, signal);
    this.#log("info", "reload command succeeded");
  }

  /**
   * Puts the served files back after a failed install (when `restorable`: the files
   * replaced were the served pair); reloads again if the endpoint had been reloaded
   * on the new ones.
   */
  async #rollBack(change: FileChange, reloaded: boolean, restorable: boolean): Promise<void> {
    if (!restorable) {
      await change.keep().catch(() => {});
      // Something is served but the files are not its pair: write them whole again next round.
      if (this.#served !== undefined) this.#rewrite = true;
      return;
    }
    try {
      await change.undo();
      this.#log("info", "the previous certificate files are back in place");
    } catch (e) {
      // What the files hold is unknown: the next round writes the whole material again.
      this.#rewrite = true;
      this.#log("error", `cannot put the previous certificate files back: ${messageOf(e)}`);
      return;
    }
    if (!reloaded) return;
    try {
      await this.#reload();
    } catch (e) {
      this.#log("error", `the reload on the previous files failed too: ${messageOf(e)}`);
    }
  }

  /**
   * Replaces key, chain and certificate as one change (`replaceFilesUndoably`): after
   * an error all three are as they were, so the pair on disk is always the old or the
   * new one. Key first and certificate last: a reload that races the agent then
   * finds either pair or, for the instant between two renames, the new key with the
   * old certificate, which nginx refuses (keeping its running configuration) rather
   * than serving. A crash in that instant can leave that pair on disk; a restarted
   * agent does not take it as served (`init`) and rewrites the files at once.
   */
  async #replace(privateKey: Secret, certPem: string, chainPem: string): Promise<FileChange> {
    const { keyFile, chainFile, certFile } = this.#options;
    let change: FileChange;
    try {
      change = await privateKey.use((key) =>
        replaceFilesUndoably([
          { path: keyFile, data: key, mode: 0o600 },
          { path: chainFile, data: chainPem, mode: 0o644 },
          { path: certFile, data: `${certPem}${chainPem}`, mode: 0o644 },
        ]),
      );
    } catch (e) {
      // Should the old files not all have been put back, what they hold is unknown:
      // the next round fetches the whole material and writes it, even if it is the
      // certificate served.
      this.#rewrite = true;
      throw new CertAgentError("io_error", `cannot replace the certificate files: ${messageOf(e)}`, { cause: e });
    }
    this.#rewrite = false;
    return change;
  }

  #stateFile(): string {
    return `${this.#options.certFile}${STATE_SUFFIX}`;
  }

  /** The fingerprint the state file names, if any. */
  async #readState(): Promise<string | undefined> {
    try {
      return (await readFile(this.#stateFile(), "utf8")).trim();
    } catch (e) {
      if (errnoOf(e) === "ENOENT") return undefined;
      throw new CertAgentError("io_error", `cannot read ${this.#stateFile()}: ${messageOf(e)}`, { cause: e });
    }
  }

  async #report(fingerprint: string, signal: AbortSignal | undefined): Promise<void> {
    await abortable(
      this.#client.request("PUT", `${this.#consumerPath()}/agents/${encodeURIComponent(this.#options.agentId)}`, {
        body: { fingerprint },
      }),
      signal,
    );
  }

  /** The fingerprint the files hold, with the leaf, when cert, chain and key are all present and match. */
  async #readServed(): Promise<{ fingerprint: string; cert: X509Certificate } | undefined> {
    const { certFile, keyFile, chainFile } = this.#options;
    let certPem: Buffer;
    let keyPem: Buffer;
    try {
      certPem = await readFile(certFile);
      keyPem = await readFile(keyFile);
      await readFile(chainFile);
    } catch (e) {
      if (errnoOf(e) === "ENOENT") return undefined;
      throw new CertAgentError("io_error", `cannot read the certificate files: ${messageOf(e)}`, { cause: e });
    }
    try {
      const cert = new X509Certificate(certPem);
      if (!cert.checkPrivateKey(createPrivateKey(keyPem))) {
        this.#log("info", `${basename(keyFile)} does not match ${basename(certFile)}`);
        return undefined;
      }
      return { fingerprint: fingerprintOf(cert), cert };
    } catch (e) {
      this.#log("info", `the certificate files do not parse (${messageOf(e)})`);
      return undefined;
    } finally {
      keyPem.fill(0);
    }
  }

  #consumerPath(): string {
    return `/v1/pki/consumers/${encodeURIComponent(this.#options.consumer)}`;
  }
}

/** How `runCertAgent` loops. */
export interface RunOptions {
  /** One round, then return; its failure is thrown. */
  readonly once?: boolean | undefined;
}

/**
 * Runs the agent until `signal` aborts (or for one round with `once`). Round
 * failures are logged and retried after the interval. Refusals by Custos (4xx: no
 * right, no such consumer, wrong role) end the run with the error while the agent
 * has never been answered: that is a setting to fix, not a condition to wait out.
 * Once it has been answered, they are logged and retried like the rest: the files
 * in place keep being served either way, and a policy put right is picked up
 * without a restart. So is a renewal the issuing policy refuses (a role narrowed
 * under the consumer: `name_not_allowed`, `ttl_too_long`, ...), once something is
 * served. A request Custos calls malformed ends the run whenever it comes.
 * @returns the last round's result, or undefined when stopped before any succeeded.
 */
export async function runCertAgent(
  client: CustosClient,
  options: CertAgentOptions,
  log: AgentLog,
  signal: AbortSignal,
  run: RunOptions = {},
): Promise<RoundResult | undefined> {
  const agent = new CertAgent(client, options, log);
  let last: RoundResult | undefined;
  try {
    await agent.init(signal);
  } catch (e) {
    if (signal.aborted) return last;
    throw e;
  }
  for (;;) {
    try {
      last = await agent.round(signal);
      if (run.once === true) return last;
    } catch (e) {
      if (signal.aborted) return last;
      if (run.once === true) throw e;
      // A 400 with nothing served is not waited out either: there is no endpoint to keep up.
      const unserved = e instanceof ClientError && e.status === 400 && agent.served === undefined;
      if (isRefusal(e) && (!agent.accepted || isMalformed(e) || unserved)) throw e;
      log("error", `${errorCodeOf(e)}: ${messageOf(e)} (retrying in ${Math.round(options.intervalMs / 1000)}s)`);
    }
    try {
      for (let left = options.intervalMs; left > 0; left -= MAX_TIMER_MS) {
        await sleep(Math.min(left, MAX_TIMER_MS), undefined, { signal });
      }
    } catch {
      return last;
    }
  }
}

/** True for errors that say the agent's settings are wrong rather than that something is down. */
export function isRefusal(e: unknown): boolean {
  if (!(e instanceof ClientError)) return false;
  if (e.status === 0) return e.code !== "unavailable" && e.code !== "internal";
  return e.status >= 400 && e.status < 500 && e.status !== 408 && e.status !== 429;
}

/**
 * True for a request Custos calls malformed (`invalid_request`, or a 400 without a
 * Custos error body, from a proxy in front): it stays malformed however often it
 * is sent. Other 400s are about Custos's state (the role a consumer is issued
 * under no longer allows its names, lifetime or key type), which an operator can
 * put right.
 */
function isMalformed(e: unknown): boolean {
  return e instanceof ClientError && e.status === 400 && (e.code === "invalid_request" || e.code === "http_error");
}

/** A refusal with what to change, for an operator reading one line. */
function explainRefusal(e: ClientError, o: CertAgentOptions): ClientError {
  const hint =
    e.status === 403
      ? `the token may not fetch ${o.consumer}'s certificate: it needs cert:agent on cert/${o.consumer}`
      : e.status === 404
        ? `no consumer ${o.consumer} (custos cert consumer create ${o.consumer} ...)`
        : e.status === 409
          ? `--role ${o.role} does not match consumer ${o.consumer}`
          : e.status === 401
            ? "the token is unknown, revoked or expired"
            : undefined;
  if (hint === undefined) return e;
  return new ClientError(e.code, `${hint}: ${e.message}`, { status: e.status, requestId: e.requestId, cause: e });
}

function parseMaterial(body: unknown): Material {
  const b = (typeof body === "object" && body !== null ? body : {}) as Record<string, unknown>;
  const { generation, serial, fingerprint, notAfter, renewAt } = b;
  if (
    typeof generation !== "number" ||
    typeof serial !== "string" ||
    typeof fingerprint !== "string" ||
    typeof notAfter !== "string" ||
    typeof renewAt !== "string"
  ) {
    throw new CertAgentError("invalid_material", "Custos's certificate answer lacks generation, fingerprint or dates");
  }
  const head: MaterialHead = { generation, serial, fingerprint, notAfter, renewAt };
  if (b.unchanged === true) return { ...head, unchanged: true };
  const { certificate, chain, privateKey } = b;
  if (typeof certificate !== "string" || typeof chain !== "string" || typeof privateKey !== "string") {
    throw new CertAgentError("invalid_material", "Custos's certificate answer lacks the certificate, chain or key");
  }
  return { ...head, certificate, chain, privateKey: Secret.fromString(privateKey) };
}

interface CheckedMaterial {
  readonly leaf: X509Certificate;
  readonly certPem: string;
  readonly chainPem: string;
  /** Past its notAfter at `now`: not to be installed, but renewed. */
  readonly expired: boolean;
}

/**
 * Refuses material that would break the endpoint or not be what Custos named: the
 * leaf must have the announced fingerprint, be issued by the chain's first
 * certificate, match the key and be valid already at `now`. Returns the PEM texts,
 * each ending in a newline, and whether the leaf has expired.
 */
function checkMaterial(material: FullMaterial, now: number): CheckedMaterial {
  let leaf: X509Certificate;
  let issuer: X509Certificate;
  try {
    leaf = new X509Certificate(material.certificate);
    issuer = new X509Certificate(material.chain);
  } catch (e) {
    throw new CertAgentError("invalid_material", `the certificate or chain does not parse: ${messageOf(e)}`, {
      cause: e,
    });
  }
  if (fingerprintOf(leaf) !== material.fingerprint) {
    throw new CertAgentError("invalid_material", `the certificate is not ${short(material.fingerprint)}`);
  }
  if (!leaf.checkIssued(issuer) || !leaf.verify(issuer.publicKey)) {
    throw new CertAgentError("invalid_material", "the chain's first certificate did not issue the certificate");
  }
  if (!material.privateKey.use((pem) => matches(leaf, pem)))
    throw new CertAgentError("invalid_material", "the private key does not match the certificate");
  if (now < Date.parse(leaf.validFrom)) {
    throw new CertAgentError(
      "invalid_material",
      `${nameOf(material)} is not valid before ${leaf.validFrom} by this host's clock`,
    );
  }
  return {
    leaf,
    certPem: withNewline(material.certificate),
    chainPem: withNewline(material.chain),
    // openssl's -checkend 0 counts notAfter itself as expired; so does this.
    expired: now >= Date.parse(leaf.validTo),
  };
}

function withNewline(pem: string): string {
  return pem.endsWith("\n") ? pem : `${pem}\n`;
}

/**
 * Replaces `path` durably with `data` (old or new file after a crash, `mode` from
 * creation: see src/files).
 * @throws CertAgentError `io_error`
 */
export async function writeFileAtomic(path: string, data: Uint8Array, mode: number): Promise<void> {
  try {
    await durableWrite(path, data, mode);
  } catch (e) {
    throw new CertAgentError("io_error", `cannot write ${path}: ${messageOf(e)}`, { cause: e });
  }
}

/**
 * Runs the reload command with `/bin/sh -c` in its own process group, so a timeout
 * kills whatever it started too. Resolves when it exits 0. An abort of `signal`
 * kills it the same way and rejects with the signal's reason.
 * @throws CertAgentError `reload_failed` with the end of its output.
 */
export function runReload(command: string, timeoutMs: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    let output = "";
    const keep = (chunk: Buffer): void => {
      output = (output + chunk.toString("utf8")).slice(-RELOAD_OUTPUT_LIMIT);
    };
    const child = spawn("/bin/sh", ["-c", command], { stdio: ["ignore", "pipe", "pipe"], detached: true });
    child.stdout.on("data", keep);
    child.stderr.on("data", keep);
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      killGroup(child.pid);
    }, timeoutMs);
    let settled = false;
    const onAbort = (): void => {
      killGroup(child.pid);
      finish(signal?.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
    const finish = (error: unknown): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
      // A daemon the command started may hold the pipes open; the command itself is done.
      child.stdout.destroy();
      child.stderr.destroy();
      if (error === undefined) resolve();
      else reject(error);
    };
    child.on("error", (e) =>
      finish(new CertAgentError("reload_failed", `cannot run the reload command: ${e.message}`)),
    );
    child.on("exit", (code, sig) => {
      const tail = output.trim().split("\n").slice(-3).join(" | ");
      const detail = tail === "" ? "" : `: ${tail}`;
      // Let the pipes deliver what the command wrote just before it exited.
      setImmediate(() => {
        if (code === 0) finish(undefined);
        else if (timedOut)
          finish(
            new CertAgentError("reload_failed", `the reload command took over ${timeoutMs} ms and was killed${detail}`),
          );
        else if (code !== null)
          finish(new CertAgentError("reload_failed", `the reload command exited with status ${code}${detail}`));
        else
          finish(new CertAgentError("reload_failed", `the reload command was killed by ${sig ?? "a signal"}${detail}`));
      });
    });
  });
}

function killGroup(pid: number | undefined): void {
  if (pid === undefined) return;
  try {
    process.kill(-pid, "SIGKILL");
  } catch {
    // Already gone.
  }
}

/** The fingerprint of the certificate a TLS handshake with `target` presents. */
export function presentedFingerprint(
  target: CheckTarget,
  servername: string | undefined,
  timeoutMs: number,
  signal?: AbortSignal,
): Promise<string> {
  return new Promise((resolve, reject) => {
    signal?.throwIfAborted();
    const socket = connect({
      host: target.host,
      port: target.port,
      // SNI takes host names only (RFC 6066).
      ...(servername !== undefined && isIP(servername) === 0 ? { servername } : {}),
      // Only the presented certificate's identity matters here, and the fingerprint
      // names it exactly; the endpoint's clients do the chain validation.
      rejectUnauthorized: false,
      timeout: timeoutMs,
    });
    const onAbort = (): void => {
      socket.destroy();
      reject(signal?.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
    const done = (): void => {
      signal?.removeEventListener("abort", onAbort);
      socket.destroy();
    };
    socket.once("secureConnect", () => {
      const raw = socket.getPeerCertificate().raw;
      done();
      if (raw === undefined) reject(new Error("no certificate presented"));
      else resolve(createHash("sha256").update(raw).digest("hex"));
    });
    socket.once("timeout", () => {
      done();
      reject(new Error(`no handshake within ${timeoutMs} ms`));
    });
    socket.once("error", (e) => {
      done();
      reject(e);
    });
  });
}

/** Waits until `target` presents `fingerprint` on consecutive handshakes, or fails at the deadline. */
async function waitUntilPresented(
  target: CheckTarget,
  servername: string | undefined,
  fingerprint: string,
  timeoutMs: number,
  signal: AbortSignal | undefined,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let confirmed = 0;
  let last = "nothing yet";
  for (;;) {
    try {
      const presented = await presentedFingerprint(
        target,
        servername,
        Math.max(1, Math.min(HANDSHAKE_TIMEOUT_MS, deadline - Date.now())),
        signal,
      );
      confirmed = presented === fingerprint ? confirmed + 1 : 0;
      last = `it presents ${short(presented)}`;
      if (confirmed >= CHECK_CONFIRMATIONS) return;
    } catch (e) {
      signal?.throwIfAborted();
      confirmed = 0;
      last = messageOf(e);
    }
    if (Date.now() + CHECK_PAUSE_MS > deadline) {
      throw new CertAgentError(
        "check_failed",
        `${addressOf(target)} did not present ${short(fingerprint)} within ${timeoutMs} ms (${last})`,
      );
    }
    await sleep(CHECK_PAUSE_MS, undefined, signal === undefined ? {} : { signal });
  }
}

/** The first DNS name of the certificate that can be asked for by SNI (wildcards can't). */
export function defaultServername(cert: X509Certificate): string | undefined {
  for (const entry of (cert.subjectAltName ?? "").split(",")) {
    const name = entry.trim();
    if (name.startsWith("DNS:") && !name.includes("*")) return name.slice(4);
  }
  return undefined;
}

/** Resolves with `promise`, or rejects as soon as `signal` aborts (the work itself is abandoned). */
function abortable<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (signal === undefined) return promise;
  signal.throwIfAborted();
  return new Promise((resolve, reject) => {
    const onAbort = (): void => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener("abort", onAbort);
        resolve(value);
      },
      (e: unknown) => {
        signal.removeEventListener("abort", onAbort);
        reject(e);
      },
    );
  });
}

function addressOf(target: CheckTarget): string {
  return isIP(target.host) === 6 ? `[${target.host}]:${target.port}` : `${target.host}:${target.port}`;
}

/** A generation as log lines and errors name it. */
function nameOf(material: MaterialHead): string {
  return `generation ${material.generation} (${short(material.fingerprint)})`;
}

/** The first 16 hex digits: enough to tell generations apart in a log line. */
function short(fingerprint: string): string {
  return fingerprint.slice(0, 16);
}

function errnoOf(e: unknown): string | undefined {
  const code = (e as { code?: unknown } | null)?.code;
  return typeof code === "string" ? code : undefined;
}

function errorCodeOf(e: unknown): string {
  if (e instanceof ClientError || e instanceof CertAgentError) return e.code;
  return "internal";
}
