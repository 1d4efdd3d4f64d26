import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { generateKeyPairSync, type KeyObject } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import {
  asciiText,
  bitStringBytes,
  booleanOf,
  contentOf,
  DerError,
  DerReader,
  directoryStringText,
  encodingOf,
  isEncoding,
  oidText,
  readerOf,
  readOid,
  tlvAt,
  validOid,
  walkWellFormed,
} from "../../src/pki/der-reader.js";
import { BIT_STRING, INTEGER, SEQUENCE, SET } from "../../src/pki/der-tags.js";

let dir: string;
before(() => {
  dir = mkdtempSync(join(tmpdir(), "custos-der-"));
});
after(() => {
  rmSync(dir, { recursive: true, force: true });
});

/** The DER openssl itself generates for an ASN1_generate_nconf string such as "OID:1.2.3" (see ASN1_generate_nconf(3)). */
function opensslGenstr(genstr: string): Buffer {
  const out = join(dir, "genstr.der");
  const r = spawnSync("openssl", ["asn1parse", "-genstr", genstr, "-noout", "-out", out]);
  assert.equal(r.status, 0, `openssl asn1parse -genstr ${genstr}: ${r.stderr?.toString()}`);
  return readFileSync(out);
}

function hex(text: string): Buffer {
  return Buffer.from(text.replace(/\s+/g, ""), "hex");
}

/** Where a TLV lies, without the buffer it lies in. */
function placeOf(tlv: { tag: number; offset: number; start: number; end: number }) {
  return { tag: tlv.tag, offset: tlv.offset, start: tlv.start, end: tlv.end };
}

/** The one TLV that fills `der`. */
function only(der: Buffer) {
  const tlv = tlvAt(der, 0, der.length);
  assert.equal(tlv.end, der.length, "the TLV fills the buffer");
  return tlv;
}

function refuses(f: () => unknown, pattern?: RegExp): void {
  assert.throws(f, (e: unknown) => {
    assert.ok(e instanceof DerError, `expected DerError, got ${String(e)}`);
    if (pattern) assert.match(e.message, pattern);
    return true;
  });
}

describe("tlvAt: DER headers only", () => {
  test("short and long form lengths read to the right content", () => {
    assert.deepEqual(placeOf(tlvAt(hex("0403 aabbcc"), 0, 5)), { tag: 0x04, offset: 0, start: 2, end: 5 });
    const long = Buffer.concat([hex("0481 80"), Buffer.alloc(0x80, 7)]);
    assert.deepEqual(placeOf(tlvAt(long, 0, long.length)), { tag: 0x04, offset: 0, start: 3, end: 3 + 0x80 });
    const longer = Buffer.concat([hex("0482 0100"), Buffer.alloc(0x100)]);
    assert.deepEqual(placeOf(tlvAt(longer, 0, longer.length)), { tag: 0x04, offset: 0, start: 4, end: longer.length });
    const empty = hex("0500");
    assert.deepEqual(placeOf(tlvAt(empty, 0, 2)), { tag: 0x05, offset: 0, start: 2, end: 2 });
    // A TLV in the middle of a buffer: offsets are absolute.
    const middle = hex("ffff 0201 05 ffff");
    assert.deepEqual(placeOf(tlvAt(middle, 2, 5)), { tag: 2, offset: 2, start: 4, end: 5 });
  });

  test("the indefinite length is refused", () => {
    refuses(() => tlvAt(hex("3080 0500 0000"), 0, 6), /indefinite/);
  });

  test("lengths not in the fewest bytes are refused", () => {
    refuses(() => tlvAt(hex("0481 05 0102030405"), 0, 8), /fewest/);
    refuses(() => tlvAt(hex("0481 7f"), 0, 3), /fewest/);
    const padded = Buffer.concat([hex("0482 0080"), Buffer.alloc(0x80)]);
    refuses(() => tlvAt(padded, 0, padded.length), /fewest/);
    refuses(() => tlvAt(hex("0483 000001 00"), 0, 6), /fewest/);
  });

  test("more than 4 length bytes and the reserved 0xff are refused", () => {
    refuses(() => tlvAt(hex("0485 0000000001 00"), 0, 8), /length bytes/);
    refuses(() => tlvAt(hex("04ff 00"), 0, 3), /length bytes/);
  });

  test("a length past the limit, or past the buffer, is refused", () => {
    refuses(() => tlvAt(hex("0403 aabb"), 0, 4), /past the end/);
    // The limit counts, not the buffer: a TLV may not run out of its container.
    refuses(() => tlvAt(hex("0403 aabbcc"), 0, 4), /past the end/);
    refuses(() => tlvAt(hex("0482 ffff 00"), 0, 5), /past the end/);
  });

  test("a header cut short is refused", () => {
    refuses(() => tlvAt(hex(""), 0, 0), /truncated/);
    refuses(() => tlvAt(hex("04"), 0, 1), /truncated/);
    refuses(() => tlvAt(hex("0482 01"), 0, 3), /truncated/);
    refuses(() => tlvAt(hex("0482 0100"), 0, 3), /truncated/);
  });

  test("high tag numbers and the end-of-contents tag are refused", () => {
    refuses(() => tlvAt(hex("1f01 00"), 0, 3), /not a DER tag/);
    refuses(() => tlvAt(hex("bf8101 00"), 0, 4), /not a DER tag/);
    refuses(() => tlvAt(hex("0000"), 0, 2), /not a DER tag/);
  });
});

describe("DerReader", () => {
  // SEQUENCE { INTEGER 5, SET { BOOLEAN TRUE } }
  const der = hex("3008 020105 3103 0101ff");

  test("reads fields in order, enters them, and knows when it is done", () => {
    const top = new DerReader(der);
    const sequence = top.enter(SEQUENCE);
    assert.equal(top.atEnd, true);
    assert.equal(sequence.peekTag(), INTEGER);
    assert.deepEqual(contentOf(sequence.read(INTEGER)), hex("05"));
    const set = sequence.enter(SET);
    assert.equal(sequence.atEnd, true);
    assert.equal(sequence.peekTag(), undefined);
    assert.equal(booleanOf(set.next()), true);
    set.finish();
    sequence.finish();
    top.finish();
  });

  test("a wrong tag is refused, naming both", () => {
    refuses(() => new DerReader(der).read(SET), /expected tag 0x31 at byte 0, found 0x30/);
    refuses(() => readerOf(only(der), INTEGER), /expected tag 0x02/);
  });

  test("finish refuses bytes left over, at the top or inside", () => {
    refuses(() => {
      const top = new DerReader(hex("3008 020105 3103 0101ff 0500"));
      top.enter(SEQUENCE);
      top.finish();
    }, /unexpected bytes at byte 10/);
    refuses(() => {
      const sequence = new DerReader(hex("300a 020105 3103 0101ff 0500")).enter(SEQUENCE);
      sequence.read(INTEGER);
      sequence.read(SET);
      sequence.finish();
    }, /unexpected bytes at byte 10/);
  });

  test("a child cannot run past its parent, even where the buffer goes on", () => {
    // SEQUENCE of length 3 holding an INTEGER that claims 2 content bytes.
    const sequence = new DerReader(hex("3003 020201 05")).enter(SEQUENCE);
    refuses(() => sequence.read(INTEGER), /past the end/);
  });

  test("encodingOf and contentOf are the whole TLV and its content", () => {
    const inner = new DerReader(der).enter(SEQUENCE);
    inner.read(INTEGER);
    const set = inner.read(SET);
    assert.deepEqual(encodingOf(set), hex("3103 0101ff"));
    assert.deepEqual(contentOf(set), hex("0101ff"));
    assert.equal(isEncoding(set, hex("3103 0101ff")), true);
    assert.equal(isEncoding(set, hex("3103 010100")), false);
    assert.equal(isEncoding(set, hex("3103 0101")), false);
  });
});

describe("walkWellFormed", () => {
  test("accepts nested constructed values and leaves primitive contents alone", () => {
    walkWellFormed(only(hex("3009 3003 0101ff a002 0500")));
    walkWellFormed(only(hex("0403 3080ff"))); // inside an OCTET STRING, not read
  });

  test("refuses a malformed TLV at any depth", () => {
    refuses(() => walkWellFormed(only(hex("3006 3004 0203 0000"))), /past the end/);
    refuses(() => walkWellFormed(only(hex("3005 3003 3080 00"))), /indefinite/);
    refuses(() => walkWellFormed(only(hex("3002 0101"))), /past the end/);
    refuses(() => walkWellFormed(only(hex("a003 0500 05"))), /truncated/);
  });

  test("refuses nesting deeper than 32 (a request cannot drive the recursion)", () => {
    let deep = hex("0500");
    for (let i = 0; i < 40; i++) deep = Buffer.concat([Buffer.from([0x30, deep.length]), deep]);
    refuses(() => walkWellFormed(tlvAt(deep, 0, deep.length)), /deeper/);
  });
});

describe("OBJECT IDENTIFIERs", () => {
  const known = [
    "1.2.840.113549",
    "1.2.840.113549.1.9.14",
    "1.2.840.10045.4.3.2",
    "2.5.4.3",
    "2.5.29.17",
    "1.3.101.112",
    "0.9.2342.19200300.100.1.1",
    "1.3.6.1.4.1.311.21.20",
    "2.16.840.1.101.3.4.2.1",
    "0.0",
    "1.39",
    "2.40",
    "2.999.3",
    "1.2.3.18446744073709551616",
  ];
  for (const dotted of known) {
    test(`${dotted}: openssl's DER reads back as the same text`, () => {
      const der = opensslGenstr(`OID:${dotted}`);
      const oid = readOid(new DerReader(der));
      assert.equal(oidText(oid), dotted);
    });
  }

  test("the algorithm OIDs in node:crypto's SPKI exports read as the registered ones", () => {
    const spki = (key: KeyObject) => key.export({ format: "der", type: "spki" });
    const cases: [Buffer, string, string | undefined][] = [
      [spki(generateKeyPairSync("ec", { namedCurve: "P-256" }).publicKey), "1.2.840.10045.2.1", "1.2.840.10045.3.1.7"],
      [spki(generateKeyPairSync("ec", { namedCurve: "P-384" }).publicKey), "1.2.840.10045.2.1", "1.3.132.0.34"],
      [spki(generateKeyPairSync("ed25519").publicKey), "1.3.101.112", undefined],
      [spki(generateKeyPairSync("x25519").publicKey), "1.3.101.110", undefined],
      [spki(generateKeyPairSync("rsa", { modulusLength: 1024 }).publicKey), "1.2.840.113549.1.1.1", undefined],
    ];
    for (const [der, algorithm, curve] of cases) {
      const fields = new DerReader(der).enter(SEQUENCE);
      const identifier = fields.enter(SEQUENCE);
      assert.equal(oidText(readOid(identifier)), algorithm);
      if (curve !== undefined) assert.equal(oidText(readOid(identifier)), curve);
      assert.ok(bitStringBytes(fields.read(BIT_STRING)).length > 0);
      fields.finish();
    }
  });

  test("malformed OIDs are refused: empty, a padded subidentifier, one left open", () => {
    refuses(() => readOid(new DerReader(hex("0600"))), /empty/);
    refuses(() => readOid(new DerReader(hex("0603 2a8001"))), /padded/);
    refuses(() => readOid(new DerReader(hex("0602 802a"))), /padded/);
    refuses(() => readOid(new DerReader(hex("0602 2a86"))), /ends inside/);
    refuses(() => readOid(new DerReader(hex("0403 2a0304"))), /expected tag 0x06/);
  });

  test("validOid checks an IMPLICIT one whatever its tag", () => {
    assert.equal(oidText(validOid(only(hex("8803 2a0304")))), "1.2.3.4");
    refuses(() => validOid(only(hex("8802 2a83"))), /ends inside/);
  });
});

describe("BOOLEAN and BIT STRING", () => {
  test("a DER BOOLEAN is one byte, 0x00 or 0xff", () => {
    assert.equal(booleanOf(only(hex("0101ff"))), true);
    assert.equal(booleanOf(only(hex("010100"))), false);
    refuses(() => booleanOf(only(hex("010101"))), /BOOLEAN/);
    refuses(() => booleanOf(only(hex("0102ffff"))), /BOOLEAN/);
    refuses(() => booleanOf(only(hex("0100"))), /BOOLEAN/);
    refuses(() => booleanOf(only(hex("0201ff"))), /BOOLEAN/);
  });

  test("a whole-byte BIT STRING gives its bytes; unused bits, emptiness or another tag are refused", () => {
    assert.deepEqual(bitStringBytes(only(hex("0303 00abcd"))), hex("abcd"));
    assert.deepEqual(bitStringBytes(only(hex("0301 00"))), hex(""));
    refuses(() => bitStringBytes(only(hex("0303 04abc0"))), /BIT STRING/);
    refuses(() => bitStringBytes(only(hex("0300"))), /BIT STRING/);
    refuses(() => bitStringBytes(only(hex("0403 00abcd"))), /BIT STRING/);
    // An empty BIT STRING followed by a zero byte: the zero is not its content.
    refuses(() => bitStringBytes(tlvAt(hex("0300 00"), 0, 3)), /BIT STRING/);
  });
});

describe("directoryStringText: the string types a name attribute is written in", () => {
  // openssl generates each encoding from UTF-8 text (FORMAT:UTF8); the reader must give the text back.
  const cases: [string, string, number][] = [
    ["FORMAT:UTF8,UTF8:café 😀 ☃", "café 😀 ☃", 0x0c],
    ["PRINTABLESTRING:Acme Web 2", "Acme Web 2", 0x13],
    ["IA5STRING:ops@example.com", "ops@example.com", 0x16],
    ["FORMAT:UTF8,T61STRING:café ÿ", "café ÿ", 0x14],
    ["FORMAT:UTF8,BMPSTRING:café ☃", "café ☃", 0x1e],
    ["FORMAT:UTF8,UNIVERSALSTRING:café 😀", "café 😀", 0x1c],
  ];
  for (const [genstr, text, tag] of cases) {
    test(`tag 0x${tag.toString(16)} (${genstr}): openssl's encoding reads as the text`, () => {
      const tlv = only(opensslGenstr(genstr));
      assert.equal(tlv.tag, tag, "openssl wrote the type asked for");
      assert.equal(directoryStringText(tlv), text);
    });
  }

  test("a BMPString is UCS-2: a surrogate pair is refused (openssl refuses it in a name too)", () => {
    refuses(() => directoryStringText(only(hex("1e04 d83dde00"))), /no character d83d/);
    assert.equal(directoryStringText(only(hex("1e04 00e9ffff"))), "é\uffff");
  });

  test("malformed text is refused, never replaced", () => {
    refuses(() => directoryStringText(only(hex("0c02 c328"))), /malformed UTF-8/);
    refuses(() => directoryStringText(only(hex("0c01 ff"))), /malformed UTF-8/);
    refuses(() => directoryStringText(only(hex("0c03 eda080"))), /malformed UTF-8/); // an encoded surrogate
    refuses(() => directoryStringText(only(hex("1e03 006100"))), /whole characters/);
    refuses(() => directoryStringText(only(hex("1e02 dc00"))), /no character/);
    refuses(() => directoryStringText(only(hex("1c03 000061"))), /whole characters/);
    refuses(() => directoryStringText(only(hex("1c04 00110000"))), /no character/);
    refuses(() => directoryStringText(only(hex("1c04 0000d800"))), /no character/);
    refuses(() => directoryStringText(only(hex("1302 41e9"))), /7-bit/);
    refuses(() => directoryStringText(only(hex("1602 4180"))), /7-bit/);
  });

  test("other types are refused, constructed strings included", () => {
    refuses(() => directoryStringText(only(hex("020105"))), /not a directory string/);
    refuses(() => directoryStringText(only(hex("0401 41"))), /not a directory string/);
    refuses(() => directoryStringText(only(hex("2c03 0c0141"))), /not a directory string/);
  });

  test("a UTF8String keeps a byte order mark: the text is what was written", () => {
    assert.equal(directoryStringText(only(hex("0c04 efbbbf41"))), "\ufeffA");
  });

  test("asciiText reads 7-bit bytes whatever the tag (an IMPLICIT IA5String)", () => {
    assert.equal(asciiText(only(hex("8206 612e6578616d"))), "a.exam");
    refuses(() => asciiText(only(hex("8201 e9"))), /7-bit/);
  });
});
