/**
 * OpenSSH public keys: the authorized_keys line format, the wire blob, SHA-256
 * fingerprints, and the conversion of the HSM's SPKI into a CA key blob.
 *
 * Subject keys come from API callers, so a key is only accepted when it is one of
 * the five types we certify and node:crypto can load it (EC points are checked to
 * lie on their curve). Error messages name at most the key type: a pasted line may
 * be anything, a private key included.
 */

import { createPublicKey, ECDH, hash, type KeyObject } from "node:crypto";
import { CustosError } from "../errors/index.js";
import { SshReader, SshWriter, stringSize } from "./wire.js";

export type KeyFamily = "ed25519" | "ecdsa" | "rsa";

export interface SubjectKey {
  /** "ssh-ed25519" | "ecdsa-sha2-nistp256" | "ecdsa-sha2-nistp384" | "ecdsa-sha2-nistp521" | "ssh-rsa" */
  readonly type: string;
  readonly family: KeyFamily;
  /** 256 for ed25519; the curve size for ecdsa; the modulus size for rsa. */
  readonly bits: number;
  /** The whole public key blob (string type + fields). */
  readonly blob: Buffer;
  /** The blob without its leading type string: what a certificate embeds after the nonce. */
  readonly fields: Buffer;
  readonly comment: string;
  /** "SHA256:<base64 without padding>", as `ssh-keygen -l` prints. */
  readonly fingerprint: string;
  /** The 32-byte SHA-256 of blob (what a KRL's fingerprint section holds). */
  readonly fingerprintRaw: Buffer;
}

/** Longest authorized_keys line accepted (an RSA 16384-bit key line is about 2.8 KiB). */
export const MAX_KEY_LINE = 16 * 1024;

/** Suffix of every certificate key type. */
export const CERT_SUFFIX = "-cert-v01@openssh.com";

interface Curve {
  readonly name: string; // the curve identifier inside the blob, "nistp256"
  readonly bits: number;
  readonly coordinate: number; // bytes per coordinate
  readonly hash: "sha256" | "sha384" | "sha512"; // what OpenSSH signs with on this curve
  readonly jwk: string;
  readonly openssl: string; // the curve's OpenSSL name
  readonly spkiPrefix: Buffer; // SPKI DER up to the uncompressed point
}

const CURVES: Readonly<Record<string, Curve>> = {
  "ecdsa-sha2-nistp256": {
    name: "nistp256",
    bits: 256,
    coordinate: 32,
    hash: "sha256",
    jwk: "P-256",
    openssl: "prime256v1",
    spkiPrefix: Buffer.from("3059301306072a8648ce3d020106082a8648ce3d030107034200", "hex"),
  },
  "ecdsa-sha2-nistp384": {
    name: "nistp384",
    bits: 384,
    coordinate: 48,
    hash: "sha384",
    jwk: "P-384",
    openssl: "secp384r1",
    spkiPrefix: Buffer.from("3076301006072a8648ce3d020106052b81040022036200", "hex"),
  },
  "ecdsa-sha2-nistp521": {
    name: "nistp521",
    bits: 521,
    coordinate: 66,
    hash: "sha512",
    jwk: "P-521",
    openssl: "secp521r1",
    spkiPrefix: Buffer.from("30819b301006072a8648ce3d020106052b8104002303818600", "hex"),
  },
};

const ED25519_SPKI_PREFIX = Buffer.from("302a300506032b6570032100", "hex");

/** The curve of an ECDSA key type, or undefined for other types. */
export function ecdsaCurve(type: string): Curve | undefined {
  return Object.hasOwn(CURVES, type) ? CURVES[type] : undefined;
}

/** Key types accepted as certificate subjects. */
export const SUBJECT_KEY_TYPES: readonly string[] = ["ssh-ed25519", ...Object.keys(CURVES), "ssh-rsa"];

/** OpenSSH refuses RSA moduli under 1024 bits (SSH_RSA_MINIMUM_MODULUS_SIZE) and over 16384. */
const RSA_MIN_BITS = 1024;
const RSA_MAX_BITS = 16384;

function refuse(message: string): CustosError {
  return new CustosError("invalid_request", message);
}

/** A type name safe to repeat in an error: short and made of key-type characters. */
function shownType(type: string): string {
  return /^[A-Za-z0-9@._-]{1,64}$/.test(type) ? `"${type}"` : "(unrecognised)";
}

function bitLength(magnitude: Buffer): number {
  if (magnitude.length === 0) return 0;
  return (magnitude.length - 1) * 8 + (32 - Math.clz32(magnitude[0] as number));
}

function fingerprintOf(raw: Buffer): string {
  return `SHA256:${raw.toString("base64").replace(/=+$/, "")}`;
}

/** "SHA256:<base64 without padding>" of a public key blob, as `ssh-keygen -l -E sha256` prints. */
export function sshFingerprint(blob: Buffer): string {
  return fingerprintOf(hash("sha256", blob, "buffer"));
}

/**
 * Reads a key's type-specific fields (everything after the type string) from `r`
 * and checks them. Certificates embed these same fields, so the certificate parser
 * uses this too. `load` also returns a node:crypto key (for verifying signatures);
 * without it the checks avoid `createPublicKey`, which is what limits sign requests.
 */
export function readKeyFields(type: string, r: SshReader): { family: KeyFamily; bits: number };
export function readKeyFields(
  type: string,
  r: SshReader,
  load: true,
): { family: KeyFamily; bits: number; key: KeyObject };
export function readKeyFields(
  type: string,
  r: SshReader,
  load = false,
): { family: KeyFamily; bits: number; key?: KeyObject } {
  if (type === "ssh-ed25519") {
    const pk = r.string();
    if (pk.length !== 32) throw refuse("ssh-ed25519 public key must be 32 bytes");
    // Neither OpenSSH nor OpenSSL checks an Ed25519 point on import: 32 bytes is all there is.
    if (!load) return { family: "ed25519", bits: 256 };
    return { family: "ed25519", bits: 256, key: loadSpki(Buffer.concat([ED25519_SPKI_PREFIX, pk]), type) };
  }
  const curve = ecdsaCurve(type);
  if (curve) {
    const name = r.text();
    if (name !== curve.name) throw refuse(`${type} key names a different curve`);
    const point = r.string();
    // OpenSSH writes uncompressed points only.
    if (point.length !== 1 + 2 * curve.coordinate || point[0] !== 4) {
      throw refuse(`${type} public key is not an uncompressed point`);
    }
    if (load)
      return { family: "ecdsa", bits: curve.bits, key: loadSpki(Buffer.concat([curve.spkiPrefix, point]), type) };
    // OpenSSL's point decoding refuses coordinates out of range and points off the
    // curve, as createPublicKey does, at an eighth of its cost.
    try {
      ECDH.convertKey(point, curve.openssl, undefined, undefined, "compressed");
    } catch (cause) {
      throw new CustosError("invalid_request", `${type} public key is not a valid point`, { cause });
    }
    return { family: "ecdsa", bits: curve.bits };
  }
  if (type === "ssh-rsa") {
    const e = r.mpint();
    const n = r.mpint();
    const bits = bitLength(n);
    if (bits < RSA_MIN_BITS || bits > RSA_MAX_BITS) throw refuse(`ssh-rsa modulus size ${bits} is out of range`);
    // node:crypto loads any RSA numbers; refuse what can't be an RSA public key.
    const eBits = bitLength(e);
    if (!((n[n.length - 1] as number) & 1) || !((e[e.length - 1] as number) & 1) || eBits < 2 || eBits > bits) {
      throw refuse("ssh-rsa public key is not valid");
    }
    let key: KeyObject;
    try {
      key = createPublicKey({
        key: { kty: "RSA", n: n.toString("base64url"), e: e.toString("base64url") },
        format: "jwk",
      });
    } catch (cause) {
      throw new CustosError("invalid_request", "ssh-rsa public key is not valid", { cause });
    }
    return { family: "rsa", bits, key };
  }
  throw refuse(`unsupported key type ${shownType(type)}`);
}

/** A node:crypto public key for an SSH public key blob (for verifying signatures). */
export function publicKeyObject(blob: Buffer): KeyObject {
  const r = new SshReader(blob);
  const type = r.text();
  const { key } = readKeyFields(type, r, true);
  r.end(`the ${type} key`);
  return key;
}

function loadSpki(spki: Buffer, type: string): KeyObject {
  try {
    return createPublicKey({ key: spki, format: "der", type: "spki" });
  } catch (cause) {
    throw new CustosError("invalid_request", `${type} public key is not a valid point`, { cause });
  }
}

function subjectFrom(blob: Buffer, type: string, fieldsAt: number, comment: string): SubjectKey {
  const r = new SshReader(blob.subarray(fieldsAt));
  const { family, bits } = readKeyFields(type, r);
  r.end(`the ${type} key`);
  const fingerprintRaw = hash("sha256", blob, "buffer");
  return {
    type,
    family,
    bits,
    blob,
    fields: blob.subarray(fieldsAt),
    comment,
    fingerprint: fingerprintOf(fingerprintRaw),
    fingerprintRaw,
  };
}

function readType(blob: Buffer): { type: string; fieldsAt: number } {
  const r = new SshReader(blob);
  const type = r.text();
  return { type, fieldsAt: r.offset };
}

function refuseNonSubject(type: string): never {
  if (type.endsWith(CERT_SUFFIX)) throw refuse("a certificate is not accepted here: give the plain public key");
  throw refuse(`unsupported key type ${shownType(type)}`);
}

/** A public key blob (the wire form), checked as `parsePublicKeyLine` does. */
export function parsePublicKeyBlob(blob: Buffer, comment = ""): SubjectKey {
  const copy = Buffer.from(blob);
  const { type, fieldsAt } = readType(copy);
  if (!SUBJECT_KEY_TYPES.includes(type)) refuseNonSubject(type);
  return subjectFrom(copy, type, fieldsAt, comment);
}

/** Strict base64: the standard alphabet, optional padding, nothing that decodes non-canonically. */
export function decodeBase64(text: string, what: string): Buffer {
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(text)) throw refuse(`${what} is not base64`);
  const bytes = Buffer.from(text, "base64");
  if (bytes.toString("base64").replace(/=+$/, "") !== text.replace(/=+$/, "")) {
    throw refuse(`${what} is not canonical base64`);
  }
  return bytes;
}

/**
 * Splits an authorized_keys-style line "type base64 [comment]" (options before the
 * type are not accepted) into its three parts.
 */
export function splitKeyLine(line: string): { type: string; data: string; comment: string } {
  if (typeof line !== "string") throw refuse("a public key line is required");
  if (line.length > MAX_KEY_LINE) throw refuse(`public key line is longer than ${MAX_KEY_LINE} characters`);
  const text = line.trim();
  if (text.startsWith("-----BEGIN")) {
    throw refuse("this is a PEM block (perhaps a private key), not an OpenSSH public key line");
  }
  if (text.includes("\n") || text.includes("\r")) throw refuse("give exactly one public key line");
  const m = /^(\S+)[ \t]+(\S+)(?:[ \t]+(.*))?$/.exec(text);
  if (!m) throw refuse("a public key line is 'type base64 [comment]'");
  return { type: m[1] as string, data: m[2] as string, comment: m[3] ?? "" };
}

/**
 * An authorized_keys-style line "type base64 [comment]". Refuses certificates,
 * unknown types, a base64 whose inner type differs from the line's, points not on
 * their curve and impossible RSA keys.
 */
export function parsePublicKeyLine(line: string): SubjectKey {
  const { type, data, comment } = splitKeyLine(line);
  if (!SUBJECT_KEY_TYPES.includes(type)) refuseNonSubject(type);
  const blob = decodeBase64(data, `${type} key data`);
  const inner = readType(blob);
  if (inner.type !== type) throw refuse(`the key data is not a ${type} key`);
  return subjectFrom(blob, type, inner.fieldsAt, comment);
}

function padTo(bytes: Buffer, size: number): Buffer {
  if (bytes.length === size) return bytes;
  const out = Buffer.alloc(size);
  bytes.copy(out, size - bytes.length);
  return out;
}

/**
 * The SSH public key blob of a public key given as SPKI DER (what the HSM keystore
 * returns): EC P-256 / P-384 / P-521, Ed25519 or RSA.
 */
export function sshPublicKeyFromSpki(spki: Buffer): Buffer {
  let key: KeyObject;
  try {
    key = createPublicKey({ key: spki, format: "der", type: "spki" });
  } catch (cause) {
    throw new CustosError("invalid_request", "not a DER SubjectPublicKeyInfo", { cause });
  }
  const jwk = key.export({ format: "jwk" });
  if (key.asymmetricKeyType === "ed25519" && jwk.x) {
    const pk = Buffer.from(jwk.x, "base64url");
    return new SshWriter(stringSize("ssh-ed25519") + stringSize(pk)).string("ssh-ed25519").string(pk).bytes();
  }
  if (key.asymmetricKeyType === "ec" && jwk.x && jwk.y) {
    const type = SUBJECT_KEY_TYPES.find((t) => ecdsaCurve(t)?.jwk === jwk.crv);
    const curve = type === undefined ? undefined : ecdsaCurve(type);
    if (type && curve) {
      const point = Buffer.concat([
        Buffer.of(4),
        padTo(Buffer.from(jwk.x, "base64url"), curve.coordinate),
        padTo(Buffer.from(jwk.y, "base64url"), curve.coordinate),
      ]);
      return new SshWriter(stringSize(type) + stringSize(curve.name) + stringSize(point))
        .string(type)
        .string(curve.name)
        .string(point)
        .bytes();
    }
  }
  if (key.asymmetricKeyType === "rsa" && jwk.n && jwk.e) {
    return new SshWriter(1024)
      .string("ssh-rsa")
      .mpint(Buffer.from(jwk.e, "base64url"))
      .mpint(Buffer.from(jwk.n, "base64url"))
      .bytes();
  }
  throw refuse("SPKI key type has no OpenSSH form here (EC P-256/384/521, Ed25519 or RSA)");
}

/** Refuses a comment that would end the line (and so smuggle in another one). */
export function checkComment(comment: string): void {
  if (/[\r\n\0]/.test(comment)) throw refuse("a key comment can't contain line breaks or NUL");
}

/** "type base64[ comment]" for a key (or certificate) blob. */
export function authorizedKeyLine(blob: Buffer, comment = ""): string {
  const { type } = readType(blob);
  if (!/^[A-Za-z0-9@._-]+$/.test(type)) throw refuse("key blob has an invalid type name");
  checkComment(comment);
  const base = `${type} ${blob.toString("base64")}`;
  return comment === "" ? base : `${base} ${comment}`;
}
