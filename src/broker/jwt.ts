import { createPublicKey, type KeyObject, randomBytes } from "node:crypto";
import { calculateJwkThumbprint, exportJWK, type JWK, type JWTPayload, jwtVerify } from "jose";
import { type Actor, auditEntry } from "../audit/index.js";
import { CustosError } from "../errors/index.js";
import { ensureKeyPair, type HsmKeyRef, type Keystore } from "../hsm/index.js";
import type { Store } from "../store/index.js";

/** The HSM label of the JWT signing key. */
export const JWT_KEY_LABEL = "custos-broker-jwt-1";
/** The setting recording that key's label and id. */
export const JWT_KEY_SETTING = "broker.jwtKey";

/** The claims of an instance JWT (docs/broker.md). */
export interface InstanceClaims {
  readonly iss: string;
  readonly sub: string;
  readonly aud: readonly string[];
  readonly iat: number;
  readonly nbf: number;
  readonly exp: number;
  readonly jti: string;
  readonly org: string;
  readonly space: string;
  readonly app: string;
  readonly instance: string;
}

export interface SignedJwt {
  readonly jwt: string;
  readonly claims: InstanceClaims;
}

interface LoadedKey {
  readonly ref: HsmKeyRef;
  readonly publicKey: KeyObject;
  readonly jwk: JWK;
}

const b64url = (value: unknown) => Buffer.from(JSON.stringify(value), "utf8").toString("base64url");

/**
 * The broker's JWTs: ES256 compact JWS signed in the HSM by a non-extractable
 * P-256 key. The header and payload are built here and their signing input signed
 * with CKM_ECDSA over its SHA-256: the raw r‖s that comes back is exactly JWS's
 * ES256 signature form. Verification is jose's.
 */
export class JwtKeys {
  readonly #keystore: Keystore;
  readonly #store: Store;
  #key: LoadedKey | undefined;

  constructor(keystore: Keystore, store: Store) {
    this.#keystore = keystore;
    this.#store = store;
  }

  /** Finds or creates the signing key and records its reference. Idempotent. */
  async ensure(actor: Actor): Promise<void> {
    const recorded = await this.#store.getSetting(JWT_KEY_SETTING);
    let ref: HsmKeyRef;
    if (recorded === undefined) {
      // A set-up that died before recording the key reuses the pair it made.
      const pair = await ensureKeyPair(this.#keystore, "ecdsa-p256", JWT_KEY_LABEL);
      ref = pair.ref;
      await this.#store.putSetting(
        JWT_KEY_SETTING,
        JSON.stringify(ref),
        auditEntry(actor, "broker.jwt-key.create", `hsm/${ref.label}`, { label: ref.label, id: ref.id }),
      );
    } else {
      ref = JSON.parse(recorded) as HsmKeyRef;
    }
    const publicKey = createPublicKey({ key: await this.#keystore.publicKey(ref), format: "der", type: "spki" });
    const exported = await exportJWK(publicKey);
    const kid = await calculateJwkThumbprint(exported, "sha256");
    this.#key = { ref, publicKey, jwk: { ...exported, kid, alg: "ES256", use: "sig" } };
  }

  #loaded(): LoadedKey {
    if (this.#key === undefined) throw new CustosError("not_initialized", "the broker's JWT key is not loaded");
    return this.#key;
  }

  /** The JWK set clients verify with. */
  jwks(): { keys: JWK[] } {
    return { keys: [this.#loaded().jwk] };
  }

  /** Signs `claims` (minus jti, which is made here). */
  async sign(claims: Omit<InstanceClaims, "jti">): Promise<SignedJwt> {
    const key = this.#loaded();
    const full: InstanceClaims = { ...claims, jti: randomBytes(16).toString("base64url") };
    const input = `${b64url({ alg: "ES256", typ: "JWT", kid: key.jwk.kid })}.${b64url(full)}`;
    const signature = await this.#keystore.sign(key.ref, "ecdsa-p256-sha256", Buffer.from(input, "ascii"));
    return { jwt: `${input}.${signature.toString("base64url")}`, claims: full };
  }

  /**
   * The claims of a JWT whose signature, issuer, audience and lifetime check out;
   * `unauthenticated` otherwise (deny-list and instance state are the caller's).
   */
  async verify(jwt: string, issuer: string, audience: readonly string[], now: Date): Promise<InstanceClaims> {
    let payload: JWTPayload;
    try {
      ({ payload } = await jwtVerify(jwt, this.#loaded().publicKey, {
        algorithms: ["ES256"],
        issuer,
        audience: [...audience],
        currentDate: now,
      }));
    } catch (e) {
      throw new CustosError("unauthenticated", "invalid or expired JWT", { cause: e });
    }
    const { jti, sub, org, space, app, instance } = payload as Record<string, unknown>;
    if (![jti, sub, org, space, app, instance].every((v) => typeof v === "string")) {
      throw new CustosError("unauthenticated", "invalid or expired JWT");
    }
    return payload as unknown as InstanceClaims;
  }
}
