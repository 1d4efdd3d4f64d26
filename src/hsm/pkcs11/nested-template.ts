import koffi from "koffi";
import type { Mechanism } from "pkcs11js";
import { CkrError, ckrName } from "./ckr.js";

/**
 * C_GenerateKey with a template that holds a template (CKA_UNWRAP_TEMPLATE), which
 * pkcs11js can't pass: its attribute values are numbers, booleans, strings or bytes,
 * while a template's value is an array of CK_ATTRIBUTE whose pointers must point at
 * real memory. koffi (a C FFI) gives us that memory and calls the module's own
 * C_GenerateKey. The same module file loaded twice is one library in the process,
 * so the session pkcs11js opened is the session used here.
 */

/** An attribute value: what pkcs11js takes, or a template of its own. */
export interface NestedAttribute {
  type: number;
  value: number | boolean | string | Buffer | NestedAttribute[];
}

/** CK_ULONG and pointers are 8 bytes on the 64-bit Linux Custos runs on (LP64). */
const WORD = 8;
/** CK_ATTRIBUTE { CK_ULONG type; void *pValue; CK_ULONG ulValueLen }; CK_MECHANISM has the same shape. */
const ATTRIBUTE_SIZE = 3 * WORD;

type GenerateKey = (session: bigint, mechanism: Buffer, template: unknown, count: bigint, key: [bigint]) => bigint;
const generators = new Map<string, GenerateKey>();

function generateKeyOf(modulePath: string): GenerateKey {
  if (koffi.sizeof("unsigned long") !== WORD || koffi.sizeof("void *") !== WORD) {
    throw new Error("nested PKCS#11 templates are laid out for 64-bit Linux (LP64) only");
  }
  let generate = generators.get(modulePath);
  if (!generate) {
    const signature = "uint64_t C_GenerateKey(uint64_t, void *, void *, uint64_t, _Out_ uint64_t *)";
    generate = koffi.load(modulePath).func(signature) as GenerateKey;
    generators.set(modulePath, generate);
  }
  return generate;
}

/**
 * Generates a key under `template` in `session` (a pkcs11js session handle) and
 * returns its handle as pkcs11js holds handles. A refusal throws a CkrError named
 * like pkcs11js's errors, so callers classify it the same way.
 */
export function generateKeyNested(
  modulePath: string,
  session: Buffer,
  mechanism: Mechanism,
  template: NestedAttribute[],
): Buffer {
  if (mechanism.parameter !== undefined) throw new TypeError("mechanism parameters are not supported here");
  const generate = generateKeyOf(modulePath);
  const size = encodedSize(template);
  const memory = koffi.alloc("uint8_t", size);
  try {
    encode(template, Buffer.from(koffi.view(memory, size)), koffi.address(memory));
    const mech = Buffer.alloc(ATTRIBUTE_SIZE);
    mech.writeBigUInt64LE(BigInt(mechanism.mechanism));
    const key: [bigint] = [0n];
    const rv = Number(generate(session.readBigUInt64LE(), mech, memory, BigInt(template.length), key));
    if (rv !== 0) throw new CkrError(ckrName(rv), `C_GenerateKey failed: ${ckrName(rv)}`);
    const handle = Buffer.alloc(WORD);
    handle.writeBigUInt64LE(BigInt(key[0]));
    return handle;
  } finally {
    koffi.free(memory);
  }
}

/** Bytes a template takes laid out: its CK_ATTRIBUTE array, then each value, 8-byte aligned. */
function encodedSize(template: NestedAttribute[]): number {
  let size = template.length * ATTRIBUTE_SIZE;
  for (const { value } of template) size += align(Array.isArray(value) ? encodedSize(value) : bytesOf(value).length);
  return size;
}

/** Lays `template` out at the start of `view`, whose first byte is at address `base`; returns the bytes used. */
function encode(template: NestedAttribute[], view: Buffer, base: bigint): number {
  let next = template.length * ATTRIBUTE_SIZE;
  template.forEach(({ type, value }, i) => {
    const at = next;
    let length: number;
    if (Array.isArray(value)) {
      next += align(encode(value, view.subarray(at), base + BigInt(at)));
      length = value.length * ATTRIBUTE_SIZE;
    } else {
      length = bytesOf(value).copy(view, at);
      next += align(length);
    }
    view.writeBigUInt64LE(BigInt(type), i * ATTRIBUTE_SIZE);
    view.writeBigUInt64LE(base + BigInt(at), i * ATTRIBUTE_SIZE + WORD);
    view.writeBigUInt64LE(BigInt(length), i * ATTRIBUTE_SIZE + 2 * WORD);
  });
  return next;
}

function bytesOf(value: number | boolean | string | Buffer): Buffer {
  if (typeof value === "boolean") return Buffer.from([value ? 1 : 0]);
  if (typeof value === "number") {
    const word = Buffer.alloc(WORD);
    word.writeBigUInt64LE(BigInt(value));
    return word;
  }
  return typeof value === "string" ? Buffer.from(value, "utf8") : value;
}

function align(n: number): number {
  return Math.ceil(n / WORD) * WORD;
}
