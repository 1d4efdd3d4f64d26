import assert from "node:assert/strict";
import { describe, test } from "node:test";
import type { ErrorCode } from "../../src/errors/index.js";
import { CustosError } from "../../src/errors/index.js";
import {
  checkKeyType,
  checkNames,
  checkRoleName,
  checkTtl,
  isKeyType,
  KEY_TYPES,
  keyUsagesFor,
  parseRole,
  type RequestedNames,
  type Role,
} from "../../src/pki/role.js";

const DAY = 86_400;

/** Asserts `fn` throws a CustosError with exactly `code`, and (optionally) a message matching `pattern`. */
function throwsCode(fn: () => unknown, code: ErrorCode, pattern?: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof CustosError, `expected CustosError, got ${String(e)}`);
    assert.equal(e.code, code, `code for: ${e.message}`);
    if (pattern) assert.match(e.message, pattern);
    return true;
  });
}

function role(fields: Record<string, unknown>, name = "web"): Role {
  return parseRole(name, fields);
}

function names(partial: Partial<RequestedNames>): RequestedNames {
  return { dnsNames: [], ipAddresses: [], uris: [], ...partial };
}

describe("checkRoleName", () => {
  test("accepts 1-64 characters of a-z, 0-9 and '-', starting with a letter or digit", () => {
    for (const ok of ["a", "0", "router", "web-1", "1-web", "a".repeat(64), "a-"]) {
      assert.equal(checkRoleName(ok), ok);
    }
  });

  test("refuses everything else with invalid_request", () => {
    for (const bad of ["", "-a", "Web", "web_1", "web.1", "a".repeat(65), "wéb", " web", "web/x", 3, undefined, null]) {
      throwsCode(() => checkRoleName(bad), "invalid_request", /role name/);
    }
  });
});

describe("parseRole", () => {
  test("an empty body takes every default from docs/pki.md", () => {
    assert.deepEqual(parseRole("web", {}), {
      name: "web",
      dnsNames: [],
      allowWildcardNames: false,
      ipRanges: [],
      uris: [],
      keyUsages: ["digitalSignature", "keyEncipherment"],
      extKeyUsages: ["serverAuth"],
      keyTypes: ["ec-p256", "rsa-2048", "rsa-3072"],
      maxTtlSeconds: 30 * DAY,
      ttlSeconds: 7 * DAY,
    });
  });

  test("every field given is taken, normalised and deduplicated", () => {
    const r = parseRole("router", {
      dnsNames: ["API.Example.COM", "api.example.com.", "*.Apps.Example.com", "localhost"],
      allowWildcardNames: true,
      ipRanges: ["10.0.0.0/8", "2001:DB8:0:0::/32", "::1/128", "192.0.2.7/32"],
      uris: ["spiffe://custos/*", "https://x.example/a?b"],
      keyUsages: ["digitalSignature", "digitalSignature"],
      extKeyUsages: ["serverAuth", "clientAuth"],
      keyTypes: ["ed25519", "rsa-4096"],
      maxTtlSeconds: 90 * DAY,
      ttlSeconds: 3600,
    });
    assert.deepEqual(r, {
      name: "router",
      dnsNames: ["api.example.com", "*.apps.example.com", "localhost"],
      allowWildcardNames: true,
      ipRanges: ["10.0.0.0/8", "2001:db8::/32", "::1/128", "192.0.2.7/32"],
      uris: ["spiffe://custos/*", "https://x.example/a?b"],
      keyUsages: ["digitalSignature"],
      extKeyUsages: ["serverAuth", "clientAuth"],
      keyTypes: ["ed25519", "rsa-4096"],
      maxTtlSeconds: 90 * DAY,
      ttlSeconds: 3600,
    });
  });

  test("an empty extKeyUsages is kept; key usages must leave each key type at least one usage", () => {
    assert.deepEqual(role({ extKeyUsages: [] }).extKeyUsages, []);
    throwsCode(() => role({ keyUsages: [] }), "invalid_request", /^keyUsages \(none\) allow no usage/);
    throwsCode(
      () => role({ keyUsages: ["keyEncipherment"], keyTypes: ["rsa-2048", "ec-p256", "ed25519"] }),
      "invalid_request",
      /allow no usage on a ec-p256 or ed25519 key$/,
    );
    assert.deepEqual(role({ keyUsages: ["keyAgreement"], keyTypes: ["ec-p384"] }).keyUsages, ["keyAgreement"]);
  });

  test("a leaf carries the role's usages its key's algorithm allows (RFC 3279, 5480, 8410)", () => {
    const all = ["digitalSignature", "keyEncipherment", "keyAgreement"] as const;
    assert.deepEqual(keyUsagesFor("rsa-3072", all), ["digitalSignature", "keyEncipherment"]);
    assert.deepEqual(keyUsagesFor("ec-p256", all), ["digitalSignature", "keyAgreement"]);
    assert.deepEqual(keyUsagesFor("ed25519", all), ["digitalSignature"]);
    assert.deepEqual(keyUsagesFor("ec-p384", ["keyEncipherment"]), []);
  });

  test("without ttlSeconds the default is 7 days, or the maximum when that is shorter", () => {
    assert.equal(role({ maxTtlSeconds: DAY }).ttlSeconds, DAY);
    assert.equal(role({ maxTtlSeconds: 10 * DAY }).ttlSeconds, 7 * DAY);
  });

  test("a name field equal to the path's is accepted (GET then PUT round-trips); another is refused", () => {
    const r = role({ dnsNames: ["a.example.com"] });
    assert.deepEqual(parseRole("web", { ...r }), r);
    throwsCode(() => parseRole("web", { name: "other" }), "invalid_request", /name "other"/);
  });

  test("the path name is checked", () => {
    throwsCode(() => parseRole("Web", {}), "invalid_request", /role name/);
  });

  test("a body that is not an object is refused", () => {
    for (const bad of [null, undefined, [], "x", 3]) {
      throwsCode(() => parseRole("web", bad), "invalid_request", /JSON object/);
    }
  });

  test("unknown fields are refused by name", () => {
    throwsCode(() => role({ dnsName: ["a.example.com"] }), "invalid_request", /unknown field "dnsName"/);
    throwsCode(() => parseRole("web", JSON.parse('{"__proto__": {"x": 1}}')), "invalid_request", /__proto__/);
  });

  test("wrong types are refused, naming the field", () => {
    const cases: [Record<string, unknown>, RegExp][] = [
      [{ dnsNames: "a.example.com" }, /^dnsNames must be an array/],
      [{ dnsNames: [3] }, /^dnsNames\[0\]/],
      [{ allowWildcardNames: "true" }, /^allowWildcardNames/],
      [{ ipRanges: "10.0.0.0/8" }, /^ipRanges must be an array/],
      [{ uris: [null] }, /^uris\[0\]/],
      [{ keyUsages: ["nonRepudiation"] }, /^keyUsages\[0\]/],
      [{ extKeyUsages: ["codeSigning"] }, /^extKeyUsages\[0\]/],
      [{ keyTypes: ["rsa-1024"] }, /^keyTypes\[0\]/],
      [{ keyTypes: "ec-p256" }, /^keyTypes must be an array/],
      [{ maxTtlSeconds: "30d" }, /^maxTtlSeconds/],
      [{ maxTtlSeconds: 3600.5 }, /^maxTtlSeconds/],
      [{ ttlSeconds: null }, /^ttlSeconds/],
      [{ ttlSeconds: 59 }, /^ttlSeconds/],
      [{ maxTtlSeconds: 11 * 365 * DAY }, /^maxTtlSeconds must be at most/],
    ];
    for (const [body, pattern] of cases) throwsCode(() => role(body), "invalid_request", pattern);
  });

  test("empty keyTypes is refused", () => {
    throwsCode(() => role({ keyTypes: [] }), "invalid_request", /^keyTypes must name at least one/);
  });

  test("ttlSeconds above maxTtlSeconds is refused, with the default maximum too", () => {
    throwsCode(() => role({ maxTtlSeconds: 3600, ttlSeconds: 3601 }), "invalid_request", /ttlSeconds \(3601\)/);
    throwsCode(() => role({ ttlSeconds: 31 * DAY }), "invalid_request", /maxTtlSeconds \(2592000\)/);
  });

  test("bad DNS patterns are refused", () => {
    const bad = [
      "",
      "*",
      "*.com", // a wildcard needs a base of two labels
      "a.*.example.com",
      "*a.example.com",
      "**.example.com",
      "*.*.example.com",
      "-a.example.com",
      "a-.example.com",
      "a..example.com",
      "a_b.example.com",
      "bücher.example.com", // IDNs come as A-labels
      "\u212Aey.example.com", // KELVIN SIGN lowercases to "k": refused before folding
      "10.0.0.1", // an IP is not a DNS name
      "host.123",
      `${"a".repeat(64)}.example.com`,
      `${"a.".repeat(127)}com`, // 255 characters
      "a example.com",
    ];
    for (const p of bad) throwsCode(() => role({ dnsNames: [p] }), "invalid_request", /^dnsNames\[0\]/);
  });

  test("good DNS patterns: A-labels, single labels, 253 characters, digits in front", () => {
    const long = `${"a.".repeat(125)}com`; // 253 characters
    const r = role({ dnsNames: ["xn--bcher-kva.example.com", "localhost", long, "1.example.com", "*.a.b"] });
    assert.deepEqual(r.dnsNames, ["xn--bcher-kva.example.com", "localhost", long, "1.example.com", "*.a.b"]);
  });

  test("bad CIDRs are refused", () => {
    const bad = [
      "10.0.0.0", // a bare address is not a range
      "10.0.0.1/8", // host bits set
      "10.0.0.0/33",
      "10.0.0.0/-1",
      "10.0.0.0/08",
      "10.0.0.0/",
      "10.0.0/8",
      "010.0.0.0/8",
      "::1/129",
      "2001:db8::1/32",
      "fe80::%eth0/64",
      "/8",
      "example.com/8",
      "10.0.0.0/8 ",
    ];
    for (const c of bad) throwsCode(() => role({ ipRanges: [c] }), "invalid_request", /^ipRanges\[0\]/);
  });

  test("bad URI patterns are refused; '*' anywhere is fine", () => {
    for (const u of ["custos/*", "*", "/path/*", "spiffe://custos/a b", "spiffe://custos/\u00e9", "", "://x"]) {
      throwsCode(() => role({ uris: [u] }), "invalid_request", /^uris\[0\]/);
    }
    assert.deepEqual(role({ uris: ["https://*.example.com/*", "spiffe://*"] }).uris, [
      "https://*.example.com/*",
      "spiffe://*",
    ]);
  });
});

describe("checkNames: DNS names", () => {
  const web = role({ dnsNames: ["api.example.com", "*.example.com", "*.apps.example.com"] });

  test("exact names and one label under a wildcard are allowed", () => {
    const out = checkNames(web, names({ dnsNames: ["api.example.com", "a.example.com", "x-1.apps.example.com"] }));
    assert.deepEqual(out, {
      commonName: undefined,
      dnsNames: ["api.example.com", "a.example.com", "x-1.apps.example.com"],
      ipAddresses: [],
      uris: [],
    });
  });

  test("a wildcard pattern does not cover two labels, nor its own base", () => {
    throwsCode(() => checkNames(web, names({ dnsNames: ["a.b.example.com"] })), "name_not_allowed", /a\.b\.example/);
    const only = role({ dnsNames: ["*.apps.example.com"] });
    throwsCode(() => checkNames(only, names({ dnsNames: ["apps.example.com"] })), "name_not_allowed");
    throwsCode(() => checkNames(only, names({ dnsNames: ["example.com"] })), "name_not_allowed");
  });

  test("uppercase and a trailing dot are normalised before matching; duplicates go", () => {
    const out = checkNames(web, names({ dnsNames: ["API.Example.COM.", "api.example.com", "A.EXAMPLE.COM"] }));
    assert.deepEqual(out.dnsNames, ["api.example.com", "a.example.com"]);
  });

  test("a wildcard name needs allowWildcardNames and the identical pattern", () => {
    const request = names({ dnsNames: ["*.apps.example.com"] });
    throwsCode(() => checkNames(web, request), "name_not_allowed", /\*\.apps\.example\.com/);
    const wild = role({ dnsNames: ["*.example.com", "*.apps.example.com"], allowWildcardNames: true });
    assert.deepEqual(checkNames(wild, request).dnsNames, ["*.apps.example.com"]);
    // "*.example.com" does not cover "*.apps.example.com" as if "*" were a label.
    const parentOnly = role({ dnsNames: ["*.example.com"], allowWildcardNames: true });
    throwsCode(() => checkNames(parentOnly, request), "name_not_allowed");
  });

  test("malformed requested names are invalid_request, not name_not_allowed", () => {
    const bad = ["bücher.example.com", "\u212Aey.example.com", "a..example.com", "*a.example.com", "a.*.example.com"];
    for (const n of bad)
      throwsCode(() => checkNames(web, names({ dnsNames: [n] })), "invalid_request", /dnsNames\[0\]/);
    throwsCode(() => checkNames(web, names({ dnsNames: ["10.0.0.1"] })), "invalid_request", /ipAddresses/);
  });

  test("an A-label is an ordinary name", () => {
    const idn = role({ dnsNames: ["xn--bcher-kva.example.com"] });
    assert.deepEqual(checkNames(idn, names({ dnsNames: ["XN--BCHER-KVA.example.com"] })).dnsNames, [
      "xn--bcher-kva.example.com",
    ]);
  });

  test("the first offending name is the one named", () => {
    throwsCode(
      () => checkNames(web, names({ dnsNames: ["a.example.com", "evil.test", "worse.test"] })),
      "name_not_allowed",
      /"evil\.test"/,
    );
  });
});

describe("checkNames: the common name", () => {
  const web = role({ dnsNames: ["api.example.com", "*.example.com"] });

  test("a CN not among the DNS names is added in front, normalised", () => {
    const out = checkNames(web, names({ commonName: "API.example.com.", dnsNames: ["a.example.com"] }));
    assert.equal(out.commonName, "api.example.com");
    assert.deepEqual(out.dnsNames, ["api.example.com", "a.example.com"]);
  });

  test("a CN already among them is not repeated", () => {
    const out = checkNames(web, names({ commonName: "a.example.com", dnsNames: ["b.example.com", "A.example.com"] }));
    assert.deepEqual(out.dnsNames, ["b.example.com", "a.example.com"]);
  });

  test("a CN alone is a request", () => {
    assert.deepEqual(checkNames(web, names({ commonName: "api.example.com" })).dnsNames, ["api.example.com"]);
  });

  test("a CN the role does not allow is name_not_allowed", () => {
    throwsCode(() => checkNames(web, names({ commonName: "evil.test" })), "name_not_allowed", /evil\.test/);
  });

  test("a CN that is an IP address, or no DNS name, is invalid_request", () => {
    const ips = role({ ipRanges: ["10.0.0.0/8", "::/0"] });
    for (const cn of ["10.0.0.1", "::1", "", "John Smith", "a@example.com"]) {
      throwsCode(() => checkNames(ips, names({ commonName: cn, ipAddresses: ["10.0.0.1"] })), "invalid_request");
    }
  });
});

describe("checkNames: IP addresses", () => {
  const net = role({ ipRanges: ["10.0.0.0/8", "192.168.1.0/24", "2001:db8::/32", "::1/128", "fd00:0:0:12::/63"] });

  test("addresses inside a range are allowed, in canonical form, without duplicates", () => {
    const out = checkNames(
      net,
      names({ ipAddresses: ["10.255.0.1", "192.168.1.255", "2001:DB8:0:0:1:0:0:1", "2001:db8::1:0:0:1", "::1"] }),
    );
    assert.deepEqual(out.ipAddresses, ["10.255.0.1", "192.168.1.255", "2001:db8::1:0:0:1", "::1"]);
  });

  test("addresses outside every range are refused", () => {
    for (const ip of ["11.0.0.1", "192.168.2.1", "2001:db9::1", "::2", "fd00:0:0:14::1"]) {
      throwsCode(() => checkNames(net, names({ ipAddresses: [ip] })), "name_not_allowed", /IP address/);
    }
    assert.deepEqual(checkNames(net, names({ ipAddresses: ["fd00:0:0:13::1"] })).ipAddresses, ["fd00:0:0:13::1"]);
  });

  test("an IPv4-mapped IPv6 address is IPv6: no IPv4 range covers it", () => {
    for (const ip of ["::ffff:10.0.0.1", "::ffff:a00:1"]) {
      throwsCode(() => checkNames(net, names({ ipAddresses: [ip] })), "name_not_allowed", /::ffff:10\.0\.0\.1/);
    }
    const mapped = role({ ipRanges: ["::ffff:0:0/96"] });
    assert.deepEqual(checkNames(mapped, names({ ipAddresses: ["::ffff:a00:1"] })).ipAddresses, ["::ffff:10.0.0.1"]);
    throwsCode(() => checkNames(mapped, names({ ipAddresses: ["10.0.0.1"] })), "name_not_allowed");
  });

  test("everything matches /0 of its own family only", () => {
    const v4 = role({ ipRanges: ["0.0.0.0/0"] });
    assert.deepEqual(checkNames(v4, names({ ipAddresses: ["203.0.113.9"] })).ipAddresses, ["203.0.113.9"]);
    throwsCode(() => checkNames(v4, names({ ipAddresses: ["::1"] })), "name_not_allowed");
  });

  test("malformed addresses and zone ids are invalid_request", () => {
    for (const ip of ["10.0.0", "010.0.0.1", "10.0.0.1/32", "fe80::1%eth0", "example.com", " 10.0.0.1"]) {
      throwsCode(() => checkNames(net, names({ ipAddresses: [ip] })), "invalid_request", /ipAddresses\[0\]/);
    }
  });
});

describe("checkNames: URIs", () => {
  const spiffe = role({ uris: ["spiffe://custos/*", "https://x.example/a?b"] });

  test("'*' matches any run of characters, including '/' and none", () => {
    const out = checkNames(spiffe, names({ uris: ["spiffe://custos/ns/a/sa/b", "spiffe://custos/"] }));
    assert.deepEqual(out.uris, ["spiffe://custos/ns/a/sa/b", "spiffe://custos/"]);
  });

  test("everything else is literal: '?' matches only '?', and the match is whole-string", () => {
    assert.deepEqual(checkNames(spiffe, names({ uris: ["https://x.example/a?b"] })).uris, ["https://x.example/a?b"]);
    for (const u of ["https://x.example/aXb", "https://x.example/a?bc", "spiffe://custos", "spiffe://other/x"]) {
      throwsCode(() => checkNames(spiffe, names({ uris: [u] })), "name_not_allowed", /URI/);
    }
  });

  test("a relative or blank-containing URI is invalid_request", () => {
    for (const u of ["custos/x", "", "spiffe://custos/a b"]) {
      throwsCode(() => checkNames(spiffe, names({ uris: [u] })), "invalid_request", /uris\[0\]/);
    }
  });
});

describe("checkNames: requests as a whole", () => {
  const all = role({ dnsNames: ["a.example.com"], ipRanges: ["10.0.0.0/8"], uris: ["spiffe://custos/*"] });

  test("a request with no name at all is invalid_request", () => {
    throwsCode(() => checkNames(all, names({})), "invalid_request", /names no/);
  });

  test("DNS names are checked before IPs, IPs before URIs", () => {
    const request = names({ dnsNames: ["b.example.com"], ipAddresses: ["11.0.0.1"], uris: ["spiffe://x/y"] });
    throwsCode(() => checkNames(all, request), "name_not_allowed", /DNS name "b\.example\.com"/);
    throwsCode(
      () => checkNames(all, { ...request, dnsNames: ["a.example.com"] }),
      "name_not_allowed",
      /IP address "11\.0\.0\.1"/,
    );
  });

  test("a role with no patterns allows nothing", () => {
    throwsCode(() => checkNames(role({}), names({ dnsNames: ["a.example.com"] })), "name_not_allowed");
  });

  test("values that are not string arrays (an API body passed through) are invalid_request", () => {
    const bad = { dnsNames: "a.example.com", ipAddresses: [], uris: [] } as unknown as RequestedNames;
    throwsCode(() => checkNames(all, bad), "invalid_request", /dnsNames must be an array/);
    throwsCode(() => checkNames(all, { ...names({}), commonName: 3 } as unknown as RequestedNames), "invalid_request");
  });
});

describe("checkTtl", () => {
  const r = role({ maxTtlSeconds: DAY, ttlSeconds: 3600 });

  test("undefined takes the role's lifetime; anything from 60 to the maximum is taken as is", () => {
    assert.equal(checkTtl(r, undefined), 3600);
    assert.equal(checkTtl(r, 60), 60);
    assert.equal(checkTtl(r, DAY), DAY);
  });

  test("non-integers and lifetimes under 60 seconds are invalid_request", () => {
    for (const bad of [59, 0, -1, 60.5, Number.NaN, Number.POSITIVE_INFINITY]) {
      throwsCode(() => checkTtl(r, bad), "invalid_request", /ttlSeconds/);
    }
    throwsCode(() => checkTtl(r, "3600" as unknown as number), "invalid_request");
  });

  test("above the maximum is ttl_too_long", () => {
    throwsCode(() => checkTtl(r, DAY + 1), "ttl_too_long", /86401.*86400/);
  });
});

describe("checkKeyType", () => {
  test("allowed types pass; others are key_type_not_allowed naming the type and the allowed ones", () => {
    const r = role({ keyTypes: ["ec-p256", "rsa-2048"] });
    checkKeyType(r, "ec-p256");
    checkKeyType(r, "rsa-2048");
    throwsCode(() => checkKeyType(r, "rsa-4096"), "key_type_not_allowed", /rsa-4096.*allowed: ec-p256, rsa-2048/);
    throwsCode(() => checkKeyType(r, "rsa-1024" as never), "key_type_not_allowed", /rsa-1024/);
  });

  test("a stored role whose usages suit no key of the type refuses that type", () => {
    // parseRole refuses such a role now; one stored before that check still can't issue a bad leaf.
    const stored: Role = { ...role({ keyTypes: ["ec-p256", "rsa-2048"] }), keyUsages: ["keyEncipherment"] };
    checkKeyType(stored, "rsa-2048");
    throwsCode(() => checkKeyType(stored, "ec-p256"), "key_type_not_allowed", /keyEncipherment.*ec-p256 key/);
  });

  test("isKeyType knows exactly KEY_TYPES", () => {
    for (const t of KEY_TYPES) assert.equal(isKeyType(t), true);
    for (const t of ["rsa-1024", "ec-p521", "EC-P256", "", 3]) assert.equal(isKeyType(t), false);
  });
});
