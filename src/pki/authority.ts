import "reflect-metadata";
import * as x509 from "@peculiar/x509";
import { type Actor, auditEntry } from "../audit/index.js";
import { CustosError, isCustosError } from "../errors/index.js";
import { ensureKeyPair, type Keystore } from "../hsm/index.js";
import { KeyedSerial } from "../serial/index.js";
import type { CaRecord, CertificateRecord, Store } from "../store/index.js";
import { buildIntermediate, buildRoot, type CaUrls, derToPem, fingerprintOf } from "./certificate.js";
import { buildCrl, type RevocationReason, type RevokedEntry } from "./crl.js";
import { answerOcsp, type OcspStatus } from "./ocsp.js";
import { type CaAlgorithm, type CaSigner, hsmCaSigner, hsmSigning } from "./signer.js";

export interface AuthorityOptions {
  readonly keystore: Keystore;
  readonly store: Store;
  /** Algorithm of new CA keys. */
  readonly caAlgorithm: CaAlgorithm;
  /** Base of the public URLs put in certificates (`https://host:port`). */
  readonly baseUrl: string;
  readonly crlValiditySeconds: number;
  readonly ocspValiditySeconds: number;
  readonly clock?: () => Date;
}

/** A CA as the API shows it. */
export interface IssuerView {
  readonly id: string;
  readonly name: string;
  readonly kind: CaRecord["kind"];
  readonly state: CaRecord["state"];
  readonly algorithm: CaAlgorithm;
  readonly subject: string;
  readonly notAfter: string;
  readonly fingerprint: string;
  readonly parentId: string | null;
}

/** A rollover's outcome: the intermediate that now issues, and the one it retired. */
export interface Rotation {
  readonly issuer: IssuerView;
  readonly retiring: IssuerView;
}

interface LoadedCa {
  readonly record: CaRecord;
  readonly signer: CaSigner;
}

/** The setting holding the HSM-wrapped AES key that seals consumers' private keys. */
export const CONSUMER_SEAL_KEY_SETTING = "pki.consumerSealKey";

/**
 * The CA hierarchy: a root and its intermediates, keys in the HSM. Creates them on
 * first use (new installs and installs from before the PKI alike), rolls the
 * intermediate over, keeps every CA's CRL fresh, and answers OCSP.
 *
 * CA records are cached in memory and reloaded after every change this process
 * makes; one process serves one store (as everywhere in Custos for now).
 */
export class Authority {
  readonly #o: AuthorityOptions;
  readonly #now: () => Date;
  #cas: LoadedCa[] = [];
  /**
   * Every new CRL of a CA is built from the one stored before it (its number, its
   * revision): signed one at a time per CA, this process's changes never find each
   * other's revision stale, which in a burst of revocations they otherwise would.
   */
  readonly #crlChanges = new KeyedSerial();

  constructor(options: AuthorityOptions) {
    this.#o = options;
    this.#now = options.clock ?? (() => new Date());
  }

  /** The URLs certificates issued by `caId` carry. */
  urlsFor(caId: string): CaUrls {
    const base = `${this.#o.baseUrl}/v1/pki`;
    // RFC 5280 4.2.2.1: the CA issuers URL serves one DER certificate.
    return { caIssuers: `${base}/issuers/${caId}/cert`, crl: `${base}/issuers/${caId}/crl`, ocsp: `${base}/ocsp` };
  }

  /**
   * Loads the hierarchy, creating a root and an intermediate when the store has
   * none. Idempotent and crash-safe: HSM keys a dead attempt made are found by label
   * and reused, and the store write is one transaction. Returns true when it created.
   */
  async ensure(actor: Actor): Promise<boolean> {
    await this.#load();
    if (this.#cas.length > 0) return false;
    const now = this.#now();
    const algorithm = this.#o.caAlgorithm;
    const rootKey = await ensureKeyPair(this.#o.keystore, algorithm, "custos-pki-root-1");
    const rootSigning = hsmSigning(this.#o.keystore, rootKey.ref, algorithm);
    const rootCert = await buildRoot(rootSigning, rootKey.publicKey, 1, now);
    const root = await this.#record("root-1", "root", algorithm, rootKey.ref, rootCert, null, now);
    const intermediate = await this.#newIntermediate(1, { ...rootSigning, certificate: rootCert }, root.id, now);
    const settings = {
      [CONSUMER_SEAL_KEY_SETTING]: (await this.#o.keystore.generateWrappedAesKey()).toString("base64"),
    };
    await this.#o.store.addCas(
      [root, intermediate],
      [],
      settings,
      auditEntry(actor, "pki.init", "pki/ca", {
        root: { id: root.id, fingerprint: fingerprintOf(rootCert.rawData), hsmLabel: root.hsmLabel },
        intermediate: { id: intermediate.id, hsmLabel: intermediate.hsmLabel },
        algorithm,
      }),
    );
    await this.#load();
    return true;
  }

  async #newIntermediate(
    generation: number,
    root: CaSigner,
    rootId: string,
    now: Date,
    algorithm: CaAlgorithm = this.#o.caAlgorithm,
  ): Promise<CaRecord> {
    const key = await ensureKeyPair(this.#o.keystore, algorithm, `custos-pki-int-${generation}`);
    const cert = await buildIntermediate(root, key.publicKey, generation, this.urlsFor(rootId), now);
    return this.#record(`int-${generation}`, "intermediate", algorithm, key.ref, cert, rootId, now);
  }

  /** A CA record with a fresh, empty CRL signed by the CA itself. */
  async #record(
    id: string,
    kind: CaRecord["kind"],
    algorithm: CaAlgorithm,
    ref: { label: string; id: string },
    cert: x509.X509Certificate,
    parentId: string | null,
    now: Date,
  ): Promise<CaRecord> {
    const signer = hsmCaSigner(this.#o.keystore, ref, algorithm, cert);
    const nextUpdate = new Date(now.getTime() + this.#o.crlValiditySeconds * 1000);
    const crlDer = await buildCrl(signer, { number: 1, thisUpdate: now, nextUpdate, entries: [] });
    return {
      id,
      kind,
      algorithm,
      hsmLabel: ref.label,
      hsmId: ref.id,
      certPem: derToPem(cert.rawData),
      parentId,
      state: "active",
      createdAt: now.toISOString(),
      notAfter: cert.notAfter.toISOString(),
      crlNumber: 1,
      crlDer,
      crlNextUpdate: nextUpdate.toISOString(),
      revision: 1,
    };
  }

  async #load(): Promise<void> {
    const records = await this.#o.store.listCas();
    this.#cas = records.map((record) => {
      const cert = new x509.X509Certificate(record.certPem);
      const ref = { label: record.hsmLabel, id: record.hsmId };
      return { record, signer: hsmCaSigner(this.#o.keystore, ref, record.algorithm, cert) };
    });
  }

  #ready(): LoadedCa[] {
    if (this.#cas.length === 0) throw new CustosError("not_initialized", "the PKI is not initialised");
    return this.#cas;
  }

  /** The intermediate that issues. */
  active(): { readonly id: string; readonly signer: CaSigner; readonly certPem: string } {
    const ca = this.#ready().find((c) => c.record.kind === "intermediate" && c.record.state === "active");
    if (!ca) throw new CustosError("internal", "no active intermediate CA");
    return { id: ca.record.id, signer: ca.signer, certPem: ca.record.certPem };
  }

  /** The root every client trusts. */
  root(): CaRecord {
    const root = this.#ready().find((c) => c.record.kind === "root");
    if (!root) throw new CustosError("internal", "no root CA");
    return root.record;
  }

  /** A CA by id; `not_found` for an unknown one. */
  issuer(id: string): CaRecord {
    const ca = this.#ready().find((c) => c.record.id === id);
    if (!ca) throw new CustosError("not_found", `no CA ${id}`);
    return ca.record;
  }

  /** The intermediate (PEM) that issued `issuerId`'s certificates, then the root: what a client needs. */
  caChainPem(issuerId: string): string {
    return `${this.issuer(issuerId).certPem}${this.root().certPem}`;
  }

  issuers(): IssuerView[] {
    return this.#ready().map(({ record, signer }) => ({
      id: record.id,
      name: signer.certificate.subjectName.getField("CN")[0] ?? record.id,
      kind: record.kind,
      state: record.state,
      algorithm: record.algorithm,
      subject: signer.certificate.subject,
      notAfter: record.notAfter,
      fingerprint: fingerprintOf(signer.certificate.rawData),
      parentId: record.parentId,
    }));
  }

  /**
   * CA rollover: a new intermediate (new HSM key, signed by the root) becomes the
   * one that issues; the old one retires, still trusted (same root) and still
   * answering CRL and OCSP for what it issued. It takes its turn with the old CA's
   * CRL changes, whose every revocation moves the record's revision on.
   */
  async rotateIntermediate(actor: Actor, algorithm: CaAlgorithm = this.#o.caAlgorithm): Promise<Rotation> {
    const old = this.active();
    const rotated = await this.changeCrl(old.id, async () => {
      const oldRecord = await this.#o.store.getCa(old.id);
      if (oldRecord?.state === "active") return this.#rotate(actor, oldRecord, algorithm);
      // A rotation before this one (here or in another process) retired it: this one
      // rotates its successor.
      await this.#load();
      return undefined;
    });
    return rotated ?? this.rotateIntermediate(actor, algorithm);
  }

  async #rotate(actor: Actor, oldRecord: CaRecord, algorithm: CaAlgorithm): Promise<Rotation> {
    const rootRecord = this.root();
    const rootSigner = this.#signerOf(rootRecord.id);
    const generation = 1 + Math.max(...this.#cas.map((c) => Number(c.record.id.split("-")[1] ?? 0)));
    const created = await this.#newIntermediate(generation, rootSigner, rootRecord.id, this.#now(), algorithm);
    await this.#o.store.addCas(
      [created],
      [{ id: oldRecord.id, expectedRevision: oldRecord.revision }],
      {},
      auditEntry(actor, "pki.ca.rotate", "pki/ca", { active: created.id, retiring: oldRecord.id, algorithm }),
    );
    await this.#load();
    const views = this.issuers();
    const find = (id: string): IssuerView => views.find((v) => v.id === id) as IssuerView;
    return { issuer: find(created.id), retiring: find(oldRecord.id) };
  }

  #signerOf(id: string): CaSigner {
    const ca = this.#ready().find((c) => c.record.id === id);
    if (!ca) throw new CustosError("not_found", `no CA ${id}`);
    return ca.signer;
  }

  /**
   * Runs `change` (one that stores a new CRL of `caId`, built with `crlWith`) once
   * this process's earlier changes to that CRL are done. A `conflict` inside it
   * then means another process's writer.
   */
  changeCrl<T>(caId: string, change: () => Promise<T>): Promise<T> {
    return this.#crlChanges.run(caId, change);
  }

  /** The CRL to store after `extra` is revoked by `issuerId` (its entries read from the store). */
  async crlWith(
    issuerId: string,
    extra: RevokedEntry | undefined,
  ): Promise<{ caId: string; expectedRevision: number; crlNumber: number; crlDer: Buffer; crlNextUpdate: string }> {
    const record = await this.#o.store.getCa(issuerId);
    if (!record) throw new CustosError("not_found", `no CA ${issuerId}`);
    const now = this.#now();
    const validity = this.#o.crlValiditySeconds * 1000;
    // RFC 5280 3.3: an entry stays until a scheduled CRL issued after its certificate
    // expired has listed it. CRLs are re-signed at half their validity, so one whole
    // validity period after expiry covers at least one of them.
    const revoked = await this.#o.store.listRevoked(issuerId, new Date(now.getTime() - validity).toISOString());
    const entries: RevokedEntry[] = revoked.map(revokedEntry);
    if (extra) entries.push(extra);
    const nextUpdate = new Date(now.getTime() + validity);
    const crlNumber = record.crlNumber + 1;
    const crlDer = await buildCrl(this.#signerOf(issuerId), {
      number: crlNumber,
      thisUpdate: now,
      nextUpdate,
      entries,
    });
    return {
      caId: issuerId,
      expectedRevision: record.revision,
      crlNumber,
      crlDer,
      crlNextUpdate: nextUpdate.toISOString(),
    };
  }

  /** Re-signs every CRL past half its life. Returns how many it replaced. */
  async refreshCrls(): Promise<number> {
    const now = this.#now().getTime();
    const halfLife = (this.#o.crlValiditySeconds * 1000) / 2;
    let replaced = 0;
    for (const record of await this.#o.store.listCas()) {
      if (Date.parse(record.crlNextUpdate) - now > halfLife) continue;
      try {
        await this.changeCrl(record.id, async () => this.#o.store.replaceCrl(await this.crlWith(record.id, undefined)));
        replaced++;
      } catch (e) {
        // Another process's revocation replaced it meanwhile: that CRL is fresh.
        if (!(isCustosError(e) && e.code === "conflict")) throw e;
      }
    }
    await this.#load();
    return replaced;
  }

  /** Called after a revocation stored a new CRL. */
  reload(): Promise<void> {
    return this.#load();
  }

  /** The CA's current CRL (DER). */
  crl(issuerId: string): Buffer {
    return this.issuer(issuerId).crlDer;
  }

  /**
   * Answers an OCSP request (DER in, DER out). Leaves are looked up in the store;
   * an intermediate asked of the root is good while Custos knows it.
   */
  ocsp(requestDer: Uint8Array, lookup: (serial: string) => Promise<CertificateRecord | undefined>): Promise<Buffer> {
    const cas = this.#ready();
    const idOf = new Map(cas.map((c) => [c.signer, c.record] as const));
    return answerOcsp(
      requestDer,
      cas.map((c) => c.signer),
      async (signer, serial): Promise<OcspStatus> => {
        const ca = idOf.get(signer);
        if (!ca) return { status: "unknown" };
        if (ca.kind === "root") {
          const known = cas.some((c) => c.record.parentId === ca.id && c.signer.certificate.serialNumber === serial);
          return known ? { status: "good" } : { status: "unknown" };
        }
        const cert = await lookup(serial);
        if (!cert || cert.issuerId !== ca.id) return { status: "unknown" };
        if (cert.status === "revoked") {
          return {
            status: "revoked",
            revokedAt: new Date(cert.revokedAt ?? 0),
            reason: (cert.revocationReason ?? "unspecified") as RevocationReason,
          };
        }
        return { status: "good" };
      },
      { now: this.#now(), validitySeconds: this.#o.ocspValiditySeconds },
    );
  }
}

function revokedEntry(c: CertificateRecord): RevokedEntry {
  return {
    serial: c.serial,
    revokedAt: new Date(c.revokedAt ?? 0),
    reason: (c.revocationReason ?? "unspecified") as RevocationReason,
  };
}
