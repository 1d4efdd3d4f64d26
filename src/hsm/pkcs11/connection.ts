import type { PKCS11 } from "pkcs11js";
import { CustosError } from "../../errors/index.js";
import type { Secret } from "../../secret/index.js";
import type { HsmHealth, HsmHealthState } from "../keystore.js";
import { CkrError, type CkrInfo, ckrOf, classify } from "./ckr.js";
import {
  CKF_USER_PIN_FINAL_TRY,
  CKF_USER_PIN_LOCKED,
  CKS_RO_USER_FUNCTIONS,
  CKS_RW_USER_FUNCTIONS,
  pk,
} from "./constants.js";
import { acquireModule, type LoadedModule, reinitializeModule, releaseModule, resetModule } from "./module.js";

/** Where log lines go; pino's `warn`/`info` fit. */
export interface HsmLogger {
  warn(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
}

export interface ConnectionOptions {
  readonly modulePath: string;
  readonly tokenLabel: string;
  readonly pin: Secret;
  readonly poolSize: number;
  readonly operationTimeoutMs: number;
  readonly logger: HsmLogger | undefined;
}

/** What an operation gets: the library and one session it holds alone until it returns. */
export interface OpContext {
  readonly p: PKCS11;
  readonly session: Buffer;
  readonly slot: Buffer;
  /** Pool serial of the session (session objects die with it). */
  readonly serial: number;
  /** Connection epoch the session belongs to. */
  readonly epoch: number;
  /**
   * Set by code that started a multi-call operation (an *Init) and cleared once it
   * finished: a session that fails while this is set may still have an operation
   * active, so it is closed rather than returned to the pool.
   */
  active: boolean;
  /**
   * Set when run() gave up on this call at its deadline and told the caller
   * hsm_unavailable: the call may still finish in the module, but nobody will hear of
   * what it created (see the keystore's cleanup of such objects).
   */
  abandoned: boolean;
}

interface PooledSession {
  readonly handle: Buffer;
  readonly serial: number;
  readonly epoch: number;
}

interface Waiter {
  /** Wakes the waiter, handing it a session when one is free (FIFO: no waiter starves). */
  resolve(session?: PooledSession): void;
}

const RW_SESSION = pk.CKF_SERIAL_SESSION | pk.CKF_RW_SESSION;
const REBUILD_BACKOFF_MIN_MS = 50;
const REBUILD_BACKOFF_MAX_MS = 1000;
const PIN_BACKOFF_MIN_MS = 1000;
const PIN_BACKOFF_MAX_MS = 30_000;
const PROBE_INTERVAL_MS = 1000;
/** While healthy, the probe checks token and login every this many ticks. */
const PROBE_OK_EVERY = 5;
/**
 * The least time close() gives calls still inside the module to return (a call
 * abandoned at its deadline runs on there: an RSA key generation, say) before it
 * leaves releasing the module to the last of them.
 */
const CLOSE_DRAIN_MS = 30_000;

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));
}

function closeQuietly(p: PKCS11, handle: Buffer): void {
  try {
    p.C_CloseSession(handle);
  } catch {
    // The session may already be gone; closing is best effort.
  }
}

function describe(e: unknown): string {
  const ckr = ckrOf(e);
  if (ckr) return ckr.name;
  if (e instanceof CustosError) return e.message;
  return e instanceof Error ? e.name : "unknown failure";
}

/**
 * The token connection: slot lookup by label, one login, a pool of sessions, an
 * epoch that changes whenever sessions or login may have been lost, and the
 * self-healing loop. Every keystore operation runs through `run()`, which gives it a
 * session, a deadline and retries across session- and device-class failures.
 */
export class Connection {
  readonly #o: ConnectionOptions;
  readonly #module: LoadedModule;
  readonly #epochListeners: Array<(epoch: number) => void> = [];
  readonly #sessionDropListeners: Array<(serial: number) => void> = [];
  #slot: Buffer | undefined;
  #epoch = 0;
  #ready = false;
  #closed = false;
  #idle: PooledSession[] = [];
  /** Sessions of the current epoch, idle or busy. */
  #open = 0;
  /** Sessions of any epoch lent to operations (some may still be inside the library). */
  #busy = 0;
  #serial = 0;
  #waiters: Waiter[] = [];
  #failures = 0;
  #pinFailures = 0;
  #nextAttemptAt = 0;
  #state: HsmHealthState = "degraded";
  #lastError: string | undefined;
  #recoveredAt: string | undefined;
  #everReady = false;
  #probe: NodeJS.Timeout | undefined;
  #probeTicks = 0;
  /** Set by a close() that gave up waiting for calls inside the module: the last of them releases it. */
  #releaseWhenIdle = false;

  private constructor(o: ConnectionOptions, module: LoadedModule) {
    this.#o = o;
    this.#module = module;
  }

  /** Opens the connection; fails with `hsm_unavailable` if the token can't be reached within the deadline. */
  static async open(o: ConnectionOptions): Promise<Connection> {
    let module: LoadedModule;
    try {
      module = acquireModule(o.modulePath);
    } catch (e) {
      // The path is no secret and is what the operator must check; dlopen's reason
      // already starts with it.
      const ckr = ckrOf(e);
      const why = ckr ? ckr.name : e instanceof Error ? e.message.replace(`${o.modulePath}: `, "") : describe(e);
      throw new CustosError("hsm_unavailable", `PKCS#11 module ${o.modulePath} could not be loaded (${why})`, {
        cause: e,
        ...(ckr ? { ckr: ckr.name } : {}),
      });
    }
    const c = new Connection(o, module);
    try {
      await c.#recover(Date.now() + o.operationTimeoutMs, "open");
    } catch (e) {
      c.#closed = true;
      releaseModule(module);
      throw e;
    }
    c.#probe = setInterval(() => c.#tick(), PROBE_INTERVAL_MS);
    c.#probe.unref();
    return c;
  }

  get p(): PKCS11 {
    return this.#module.p;
  }

  get epoch(): number {
    return this.#epoch;
  }

  /** Called with the new epoch whenever sessions/login were recycled (caches of handles must go). */
  onEpoch(listener: (epoch: number) => void): void {
    this.#epochListeners.push(listener);
  }

  /** Called with a session's serial when that one session is closed (its session objects die). */
  onSessionDrop(listener: (serial: number) => void): void {
    this.#sessionDropListeners.push(listener);
  }

  health(): HsmHealth {
    const degraded = this.#state === "ok" && (!this.#ready || this.#open < this.#o.poolSize);
    const state: HsmHealthState = degraded ? "degraded" : this.#state;
    return {
      state,
      token: this.#o.tokenLabel,
      sessions: { open: this.#ready ? this.#open : 0, size: this.#o.poolSize },
      ...(state !== "ok" && this.#lastError !== undefined ? { lastError: this.#lastError } : {}),
      ...(this.#recoveredAt !== undefined ? { recoveredAt: this.#recoveredAt } : {}),
    };
  }

  /**
   * Runs `fn` with a pooled session under the operation deadline. Session-class
   * failures recycle sessions and login and retry at once; device-class failures
   * rebuild everything with back-off; when the deadline passes the caller gets
   * `hsm_unavailable`. Other CKRs become `hsm_error`; non-PKCS#11 errors pass through.
   */
  async run<T>(op: string, fn: (ctx: OpContext) => Promise<T>): Promise<T> {
    const deadline = Date.now() + this.#o.operationTimeoutMs;
    let last: CkrInfo | undefined;
    let sessionRetries = 0;
    for (;;) {
      if (this.#closed) throw new CustosError("hsm_unavailable", "keystore is closed");
      if (Date.now() >= deadline) throw this.#unavailable(op, last);
      const session = await this.#acquire(deadline, op);
      const ctx: OpContext = {
        p: this.p,
        session: session.handle,
        slot: this.#slot!,
        serial: session.serial,
        epoch: session.epoch,
        active: false,
        abandoned: false,
      };
      const attempt = this.#attempt(session, ctx, fn);
      const outcome = await raceDeadline(attempt, deadline);
      if (outcome === undefined) {
        ctx.abandoned = true;
        throw this.#unavailable(op, last);
      }
      if (outcome.ok) return outcome.value;
      const e = outcome.error;
      const ckr = ckrOf(e);
      if (!ckr) throw e;
      last = ckr;
      const cls = classify(ckr.name);
      if (cls === "other") throw new CustosError("hsm_error", `${op} failed: ${ckr.name}`, { cause: e, ckr: ckr.name });
      if (ckr.name === "CKR_OPERATION_ACTIVE") {
        // Only this session is stuck; #attempt already closed it.
        continue;
      }
      this.#markBroken(ctx.epoch, ckr.name, cls);
      if (cls === "session") {
        sessionRetries++;
        if (sessionRetries > 1) await sleep(Math.min(20 * sessionRetries, 200, deadline - Date.now()));
      }
    }
  }

  /** Closes our sessions; the last keystore on the module finalizes it. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#probe) clearInterval(this.#probe);
    for (const w of this.#waiters.splice(0)) w.resolve();
    // Closing a session or finalizing the library under a call still inside it can
    // crash the process, and a call abandoned at its deadline may run on for a while:
    // wait for every lent session to come back, then close them all.
    const until = Date.now() + Math.max(this.#o.operationTimeoutMs, CLOSE_DRAIN_MS);
    while (this.#busy > 0 && Date.now() < until) await sleep(5);
    for (const s of this.#idle.splice(0)) closeQuietly(this.p, s.handle);
    this.#open = 0;
    this.#ready = false;
    if (this.#busy > 0) {
      // Never finalize under a running call: leave that to the last one to return.
      this.#releaseWhenIdle = true;
      this.#o.logger?.warn(
        { tokenLabel: this.#o.tokenLabel, calls: this.#busy },
        "hsm: closed with calls still inside the module; releasing it when they return",
      );
      return;
    }
    releaseModule(this.#module);
  }

  /**
   * Confirms that an empty search result means "absent" rather than "logged out" or
   * "token gone" (both of which also make C_FindObjects return nothing).
   */
  assertAlive(ctx: OpContext): void {
    // Another call found the login or sessions lost and recovered while this one ran:
    // what this call saw may be that loss (handles gone or reused), not its input.
    if (ctx.epoch !== this.#epoch)
      throw new CkrError("CKR_SESSION_HANDLE_INVALID", "the connection recovered meanwhile");
    const info = ctx.p.C_GetSessionInfo(ctx.session);
    if (info.state !== CKS_RW_USER_FUNCTIONS && info.state !== CKS_RO_USER_FUNCTIONS) {
      throw new CkrError("CKR_USER_NOT_LOGGED_IN", "session is not logged in");
    }
    ctx.p.C_GetTokenInfo(ctx.slot);
  }

  async #attempt<T>(
    session: PooledSession,
    ctx: OpContext,
    fn: (ctx: OpContext) => Promise<T>,
  ): Promise<{ ok: true; value: T } | { ok: false; error: unknown }> {
    try {
      const value = await fn(ctx);
      this.#release(session, ctx.active);
      return { ok: true, value };
    } catch (thrown) {
      const error = this.#lostMeanwhile(ctx, thrown) ?? thrown;
      const ckr = ckrOf(error);
      const lost = ckr !== undefined && classify(ckr.name) !== "other";
      this.#release(session, ctx.active || lost || ckr?.name === "CKR_OPERATION_ACTIVE");
      return { ok: false, error };
    }
  }

  /**
   * For a refusal (an "other" CKR), the session- or device-class failure behind it, if
   * the session lost its login or the connection recovered while the call ran. A logout
   * during a *Init strips the key's attributes under SoftHSM's feet (it answers
   * CKR_KEY_TYPE_INCONSISTENT), and a recovery invalidates the handles the call used:
   * neither is the caller's doing, and both are retried.
   */
  #lostMeanwhile(ctx: OpContext, error: unknown): unknown {
    const ckr = ckrOf(error);
    if (ckr === undefined || classify(ckr.name) !== "other") return undefined;
    try {
      this.assertAlive(ctx);
      return undefined;
    } catch (e) {
      const lost = ckrOf(e);
      return lost !== undefined && classify(lost.name) !== "other" ? e : undefined;
    }
  }

  /** The token the errors name: the label is no secret, and a wrong one is a likely cause. */
  #onToken(): string {
    return `on token ${JSON.stringify(this.#o.tokenLabel)}`;
  }

  #unavailable(op: string, last: CkrInfo | undefined): CustosError {
    const reason = last?.name ?? this.#lastError ?? "deadline passed";
    return new CustosError("hsm_unavailable", `HSM unavailable during ${op} (${reason}) ${this.#onToken()}`, {
      ...(last ? { ckr: last.name } : {}),
    });
  }

  async #acquire(deadline: number, op: string): Promise<PooledSession> {
    for (;;) {
      if (this.#closed) throw new CustosError("hsm_unavailable", "keystore is closed");
      if (!this.#ready) await this.#recover(deadline, op);
      const idle = this.#idle.pop();
      if (idle) {
        this.#busy++;
        return idle;
      }
      if (this.#open < this.#o.poolSize) {
        const opened = this.#openSession();
        if (opened) {
          this.#busy++;
          return opened;
        }
        continue;
      }
      const remaining = deadline - Date.now();
      if (remaining <= 0) throw this.#unavailable(op, undefined);
      const handed = await new Promise<PooledSession | undefined>((resolve) => {
        const waiter: Waiter = {
          resolve: (session) => {
            clearTimeout(timer);
            resolve(session);
          },
        };
        const timer = setTimeout(() => {
          const i = this.#waiters.indexOf(waiter);
          if (i >= 0) this.#waiters.splice(i, 1);
          resolve(undefined);
        }, remaining);
        this.#waiters.push(waiter);
      });
      if (handed) return handed;
    }
  }

  /** Opens one more session of the current epoch; on failure marks the connection broken. */
  #openSession(): PooledSession | undefined {
    const epoch = this.#epoch;
    try {
      const handle = this.p.C_OpenSession(this.#slot!, RW_SESSION);
      this.#open++;
      return { handle, serial: ++this.#serial, epoch };
    } catch (e) {
      const ckr = ckrOf(e);
      this.#markBroken(epoch, ckr?.name ?? describe(e), ckr ? classify(ckr.name) : "device");
      return undefined;
    }
  }

  /** Opens one more idle session without declaring the connection broken if that fails. */
  #topUp(): boolean {
    try {
      const handle = this.p.C_OpenSession(this.#slot!, RW_SESSION);
      this.#open++;
      this.#idle.push({ handle, serial: ++this.#serial, epoch: this.#epoch });
      return true;
    } catch {
      return false;
    }
  }

  #release(session: PooledSession, discard: boolean): void {
    this.#busy--;
    if (this.#closed && !discard && !this.#releaseWhenIdle && session.epoch === this.#epoch) {
      // close() closes the idle sessions once every call is back: closing this one now
      // would destroy the keys unwrapped on it that calls on other sessions still use.
      this.#idle.push(session);
      return;
    }
    if (session.epoch !== this.#epoch || discard || this.#closed) {
      closeQuietly(this.p, session.handle);
      if (session.epoch === this.#epoch) {
        this.#open--;
        for (const l of this.#sessionDropListeners) l(session.serial);
        if (this.#ready && !this.#closed) this.#topUp();
      }
      this.#waiters.shift()?.resolve();
      if (this.#releaseWhenIdle && this.#busy === 0) {
        this.#releaseWhenIdle = false;
        releaseModule(this.#module);
      }
      return;
    }
    // Hand the session straight to the longest waiter: pushing it to the idle list
    // would let a newcomer take it first, and under load a waiter could starve
    // past its deadline.
    const waiter = this.#waiters.shift();
    if (waiter) {
      this.#busy++;
      waiter.resolve(session);
    } else {
      this.#idle.push(session);
    }
  }

  #markBroken(epochSeen: number, reason: string, cls: "session" | "device" | "login" | "other"): void {
    if (epochSeen !== this.#epoch || !this.#ready) return;
    this.#ready = false;
    if (this.#state === "ok") this.#state = "degraded";
    this.#lastError = reason;
    // `tokenLabel`, not `token`: the log redacts `token` keys as credentials.
    this.#o.logger?.warn(
      { tokenLabel: this.#o.tokenLabel, ckr: reason, class: cls },
      "hsm: connection lost, recovering",
    );
  }

  /** Waits for the next allowed rebuild attempt (within the deadline) and makes it. */
  async #recover(deadline: number, op: string): Promise<void> {
    while (!this.#ready) {
      if (this.#closed) throw new CustosError("hsm_unavailable", "keystore is closed");
      const now = Date.now();
      if (this.#nextAttemptAt > now) {
        if (this.#nextAttemptAt >= deadline) {
          throw new CustosError(
            "hsm_unavailable",
            `HSM unavailable during ${op} (${this.#lastError ?? "recovering"}) ${this.#onToken()}`,
            {
              ...(this.#lastError?.startsWith("CKR_") ? { ckr: this.#lastError } : {}),
            },
          );
        }
        await sleep(this.#nextAttemptAt - now);
        continue;
      }
      this.#tryRebuild();
    }
  }

  /** One synchronous rebuild attempt; updates health and back-off either way. */
  #tryRebuild(): void {
    try {
      this.#rebuild();
    } catch (e) {
      const ckr = ckrOf(e);
      const cls = ckr ? classify(ckr.name) : "device";
      this.#failures++;
      let wait = Math.min(REBUILD_BACKOFF_MIN_MS * 2 ** (this.#failures - 1), REBUILD_BACKOFF_MAX_MS);
      if (cls === "login") {
        this.#pinFailures++;
        wait = Math.min(PIN_BACKOFF_MIN_MS * 2 ** (this.#pinFailures - 1), PIN_BACKOFF_MAX_MS);
      }
      this.#nextAttemptAt = Date.now() + wait;
      const reason = describe(e);
      if (this.#state !== "unavailable" || this.#lastError !== reason) {
        this.#o.logger?.warn({ tokenLabel: this.#o.tokenLabel, reason, retryInMs: wait }, "hsm: token unavailable");
      }
      this.#state = "unavailable";
      this.#lastError = reason;
      return;
    }
    const wasDown = this.#state !== "ok";
    this.#failures = 0;
    this.#pinFailures = 0;
    this.#nextAttemptAt = 0;
    this.#state = "ok";
    if (this.#everReady && wasDown) {
      this.#recoveredAt = new Date().toISOString();
      this.#o.logger?.info({ tokenLabel: this.#o.tokenLabel, after: this.#lastError }, "hsm: recovered");
    }
    this.#lastError = undefined;
    this.#everReady = true;
  }

  /**
   * Starts a new epoch: forgets every session and handle, finds the slot by label
   * again, opens the pool and logs in once.
   */
  #rebuild(): void {
    this.#epoch++;
    this.#ready = false;
    for (const s of this.#idle.splice(0)) closeQuietly(this.p, s.handle);
    this.#open = 0;
    for (const l of this.#epochListeners) l(this.#epoch);
    this.#slot = this.#findSlot();
    const flags = this.p.C_GetTokenInfo(this.#slot).flags;
    if (flags & (CKF_USER_PIN_LOCKED | CKF_USER_PIN_FINAL_TRY)) {
      // An automatic attempt could lock the PIN for good; an operator must look first.
      throw new CkrError("CKR_PIN_LOCKED", "user PIN locked or on its final try; not attempting login");
    }
    const first = this.p.C_OpenSession(this.#slot, RW_SESSION);
    try {
      this.#o.pin.use((pin) => this.p.C_Login(first, pk.CKU_USER, pin.toString("utf8")));
    } catch (e) {
      if (ckrOf(e)?.name !== "CKR_USER_ALREADY_LOGGED_IN") {
        closeQuietly(this.p, first);
        throw e;
      }
    }
    this.#open = 1;
    this.#idle.push({ handle: first, serial: ++this.#serial, epoch: this.#epoch });
    this.#ready = true;
    // A short pool (an HSM's session limit, say) is degraded, not down: top it up later.
    while (this.#open < this.#o.poolSize && this.#topUp()) {}
    for (const w of this.#waiters.splice(0)) w.resolve();
  }

  /** The slot holding our token, by label (slot ids change when tokens are re-initialised). */
  #findSlot(): Buffer {
    const found = this.#scanSlots();
    if (found) return found;
    // SoftHSM (and some other modules) rescan tokens only on C_Initialize; that is
    // safe only when no other user of the library in this process could be hurt.
    if (this.#busy === 0 && resetModule(this.#module)) {
      const again = this.#scanSlots();
      if (again) return again;
    }
    throw new CkrError("CKR_TOKEN_NOT_PRESENT", "no token with the configured label");
  }

  #scanSlots(): Buffer | undefined {
    let slots: Buffer[];
    try {
      slots = this.p.C_GetSlotList(true);
    } catch (e) {
      if (ckrOf(e)?.name !== "CKR_CRYPTOKI_NOT_INITIALIZED") throw e;
      reinitializeModule(this.#module);
      slots = this.p.C_GetSlotList(true);
    }
    for (const slot of slots) {
      try {
        const info = this.p.C_GetTokenInfo(slot);
        if (info.label.trim() === this.#o.tokenLabel) return slot;
      } catch {
        // A slot whose token is gone or half-initialised is simply not ours.
      }
    }
    return undefined;
  }

  /** Background probe: drives recovery without traffic and notices silent loss while healthy. */
  #tick(): void {
    if (this.#closed) return;
    this.#probeTicks++;
    if (!this.#ready) {
      if (Date.now() >= this.#nextAttemptAt) this.#tryRebuild();
      return;
    }
    if (this.#probeTicks % PROBE_OK_EVERY !== 0) return;
    const s = this.#idle.pop();
    if (!s) return;
    const ctx: OpContext = {
      p: this.p,
      session: s.handle,
      slot: this.#slot!,
      serial: s.serial,
      epoch: s.epoch,
      active: false,
      abandoned: false,
    };
    this.#busy++;
    try {
      this.assertAlive(ctx);
      this.#release(s, false);
    } catch (e) {
      const ckr = ckrOf(e);
      this.#release(s, true);
      this.#markBroken(s.epoch, ckr?.name ?? describe(e), ckr ? classify(ckr.name) : "device");
      if (!this.#ready) this.#tryRebuild();
    }
  }
}

async function raceDeadline<T>(work: Promise<T>, deadline: number): Promise<T | undefined> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<undefined>((resolve) => {
    timer = setTimeout(() => resolve(undefined), Math.max(0, deadline - Date.now()));
  });
  try {
    return await Promise.race([work, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
