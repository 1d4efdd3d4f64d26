import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createHash, createPrivateKey, X509Certificate } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { request } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { connect, createServer } from "node:tls";
import Database from "better-sqlite3";
import { type CustosInstance, startCustos } from "../helpers/custos.js";

type Json = Record<string, unknown>;

/** Runs openssl; returns its combined output and status. */
function openssl(args: string[], input?: Buffer): { status: number; out: string } {
  const r = spawnSync("openssl", args, { input, encoding: "buffer" });
  return { status: r.status ?? -1, out: `${r.stdout.toString()}${r.stderr.toString()}` };
}

function fingerprint(pem: string): string {
  return createHash("sha256").update(new X509Certificate(pem).raw).digest("hex");
}

/** GET over HTTPS without a token, as any client of the public endpoints. */
function fetchPublic(custos: CustosInstance, path: string): Promise<{ status: number; body: Buffer; type: string }> {
  return new Promise((ok, fail) => {
    const req = request({ host: "127.0.0.1", port: custos.port, path, ca: custos.ca, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () =>
        ok({ status: res.statusCode ?? 0, body: Buffer.concat(chunks), type: String(res.headers["content-type"]) }),
      );
    });
    req.on("error", fail);
    req.end();
  });
}

describe("internal PKI", () => {
  let custos: CustosInstance;
  let dir: string;
  const file = (name: string, content: string | Buffer): string => {
    const path = join(dir, name);
    writeFileSync(path, content);
    return path;
  };

  before(async () => {
    custos = await startCustos();
    dir = mkdtempSync(join(tmpdir(), "custos-pki-"));
    const role = await custos.call("PUT", "/v1/pki/roles/web", {
      dnsNames: ["*.svc.test", "api.test"],
      ipRanges: ["127.0.0.0/8"],
      extKeyUsages: ["serverAuth", "clientAuth"],
      keyTypes: ["ec-p256", "rsa-2048"],
      maxTtlSeconds: 86_400,
      ttlSeconds: 3600,
    });
    assert.equal(role.status, 200, role.text);
  });
  after(async () => {
    await custos?.dispose();
    rmSync(dir, { recursive: true, force: true });
  });

  const issue = async (body: Json): Promise<Json> => {
    const r = await custos.call("POST", "/v1/pki/roles/web/issue", body);
    assert.equal(r.status, 200, r.text);
    return r.body as Json;
  };
  const errorCode = (r: { body: unknown }) => ((r.body as Json).error as Json).code;

  test("the root served publicly is the CA file clients were given, and the chain leads to it", async () => {
    const root = await fetchPublic(custos, "/v1/pki/ca.pem");
    assert.equal(root.status, 200);
    assert.equal(root.body.toString(), custos.ca);
    const der = await fetchPublic(custos, "/v1/pki/ca");
    assert.equal(der.type, "application/pkix-cert");
    assert.ok(new X509Certificate(der.body).raw.equals(new X509Certificate(custos.ca).raw));
    const issuers = JSON.parse((await fetchPublic(custos, "/v1/pki/issuers")).body.toString()) as { issuers: Json[] };
    assert.deepEqual(
      issuers.issuers.map((i) => [i.id, i.kind, i.state]),
      [
        ["root-1", "root", "active"],
        ["int-1", "intermediate", "active"],
      ],
    );
    const chain = (await fetchPublic(custos, "/v1/pki/chain.pem")).body.toString();
    const intermediate = new X509Certificate(chain);
    assert.ok(intermediate.ca);
    assert.ok(intermediate.verify(new X509Certificate(custos.ca).publicKey), "the root signed the intermediate");
  });

  test("issued certificates verify with openssl, from a CSR and with a generated key", async () => {
    const generated = await issue({ dnsNames: ["api.test"], ipAddresses: ["127.0.0.1"] });
    assert.match(String(generated.privateKey), /BEGIN PRIVATE KEY/);
    const rootFile = file("root.pem", custos.ca);
    const check = (issued: Json, name: string): string => {
      const leaf = file(`${name}.pem`, String(issued.certificate));
      const intermediate = file(`${name}-int.pem`, String(issued.chain));
      const v = openssl(["verify", "-CAfile", rootFile, "-untrusted", intermediate, leaf]);
      assert.equal(v.status, 0, v.out);
      assert.match(v.out, /: OK/);
      assert.equal(fingerprint(String(issued.certificate)), issued.fingerprint);
      return leaf;
    };
    const leaf = new X509Certificate(readFileSync(check(generated, "generated")));
    assert.match(String(leaf.subjectAltName), /DNS:api\.test/);
    assert.match(String(leaf.subjectAltName), /IP Address:127\.0\.0\.1/);

    const keyFile = join(dir, "csr.key");
    const csrFile = join(dir, "req.csr");
    const req = openssl([
      "req",
      "-new",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-keyout",
      keyFile,
      "-subj",
      "/CN=a.svc.test",
      "-addext",
      "subjectAltName=DNS:a.svc.test,DNS:b.svc.test",
      "-out",
      csrFile,
    ]);
    assert.equal(req.status, 0, req.out);
    const signed = await custos.call("POST", "/v1/pki/roles/web/sign", { csr: readFileSync(csrFile, "utf8") });
    assert.equal(signed.status, 200, signed.text);
    const fromCsr = new X509Certificate(readFileSync(check(signed.body as Json, "from-csr")));
    const csrKey = openssl(["req", "-in", csrFile, "-noout", "-pubkey"]).out;
    assert.equal(fromCsr.publicKey.export({ type: "spki", format: "pem" }), csrKey.trim().concat("\n"));
    assert.match(String(fromCsr.subjectAltName), /DNS:b\.svc\.test/);
  });

  test("a Node TLS client trusting only the root connects to a server using an issued certificate", async () => {
    const issued = await issue({ dnsNames: ["api.test"] });
    const server = createServer({
      key: String(issued.privateKey),
      cert: `${String(issued.certificate)}${String(issued.chain)}`,
    });
    await new Promise<void>((ok) => server.listen(0, "127.0.0.1", ok));
    try {
      const { port } = server.address() as { port: number };
      const peer = await new Promise<string>((ok, fail) => {
        const socket = connect({ host: "127.0.0.1", port, servername: "api.test", ca: custos.ca }, () => {
          const raw = socket.getPeerCertificate().raw;
          socket.end();
          ok(createHash("sha256").update(raw).digest("hex"));
        });
        socket.on("error", fail);
      });
      assert.equal(peer, issued.fingerprint);
      // The same client refuses a name the certificate does not carry.
      await assert.rejects(
        new Promise((ok, fail) => {
          const socket = connect({ host: "127.0.0.1", port, servername: "other.test", ca: custos.ca }, () =>
            ok(socket),
          );
          socket.on("error", fail);
        }),
        /altnames|does not match/i,
      );
    } finally {
      server.close();
    }
  });

  test("revocation: the CRL lists the certificate and verifies; OCSP answers revoked and good", async () => {
    const revoked = await issue({ dnsNames: ["x.svc.test"] });
    const good = await issue({ dnsNames: ["y.svc.test"] });
    const r = await custos.call("POST", `/v1/pki/certs/${String(revoked.serial)}/revoke`, { reason: "keyCompromise" });
    assert.equal(r.status, 200, r.text);
    assert.equal(((r.body as Json).certificate as Json).status, "revoked");
    const again = await custos.call("POST", `/v1/pki/certs/${String(revoked.serial)}/revoke`, {});
    assert.equal(again.status, 409, again.text);

    const crl = file("crl.pem", (await fetchPublic(custos, "/v1/pki/crl.pem")).body);
    const chain = file("ca-chain.pem", `${String(revoked.chain)}${custos.ca}`);
    const verified = openssl(["crl", "-in", crl, "-CAfile", chain, "-verify", "-noout"]);
    assert.equal(verified.status, 0, verified.out);
    assert.match(verified.out, /verify OK/);
    const text = openssl(["crl", "-in", crl, "-noout", "-text"]).out;
    assert.match(text, new RegExp(String(revoked.serial).toUpperCase()));
    assert.match(text, /Key Compromise/);
    assert.doesNotMatch(text, new RegExp(String(good.serial).toUpperCase()));
    const der = await fetchPublic(custos, "/v1/pki/crl");
    assert.equal(der.type, "application/pkix-crl");

    const root = file("ocsp-root.pem", custos.ca);
    const intermediate = file("ocsp-int.pem", String(revoked.chain));
    const ask = (leaf: Json, name: string) =>
      openssl([
        "ocsp",
        "-issuer",
        intermediate,
        "-cert",
        file(name, String(leaf.certificate)),
        "-url",
        `${custos.url}/v1/pki/ocsp`,
        "-CAfile",
        root,
      ]);
    const revokedAnswer = ask(revoked, "ocsp-revoked.pem");
    assert.match(revokedAnswer.out, /Response verify OK/);
    assert.match(revokedAnswer.out, /: revoked/);
    assert.match(revokedAnswer.out, /Reason: keyCompromise/);
    const goodAnswer = ask(good, "ocsp-good.pem");
    assert.match(goodAnswer.out, /Response verify OK/);
    assert.match(goodAnswer.out, /: good/);
  });

  test("role limits: a foreign name, a long TTL, a forbidden key type or no policy → a specific 4xx, nothing issued, audited", async () => {
    const count = async () =>
      (((await custos.call("GET", "/v1/pki/certs?role=web&limit=10000")).body as Json).certificates as Json[]).length;
    const before = await count();
    const policy = await custos.call("PUT", "/v1/policies/web-issuer", {
      description: "may issue under web only",
      rules: [{ resource: "pki/role/web", actions: ["pki:issue"] }],
    });
    assert.equal(policy.status, 200, policy.text);
    const other = await custos.call("PUT", "/v1/policies/other-issuer", {
      description: "may issue under another role",
      rules: [{ resource: "pki/role/other", actions: ["pki:issue"] }],
    });
    assert.equal(other.status, 200, other.text);
    const tokenOf = async (policies: string[]) =>
      ((await custos.call("POST", "/v1/auth/tokens", { name: `t-${policies[0]}`, policies })).body as Json)
        .token as string;
    const issuerToken = await tokenOf(["web-issuer"]);
    const outsider = await tokenOf(["other-issuer"]);

    const cases: [Json, string, number, string | null][] = [
      [{ dnsNames: ["evil.example"] }, "name_not_allowed", 400, issuerToken],
      [{ dnsNames: ["a.b.svc.test"] }, "name_not_allowed", 400, issuerToken],
      [{ dnsNames: ["api.test"], ipAddresses: ["10.0.0.1"] }, "name_not_allowed", 400, issuerToken],
      [{ dnsNames: ["api.test"], ttlSeconds: 86_401 }, "ttl_too_long", 400, issuerToken],
      [{ dnsNames: ["api.test"], keyType: "ed25519" }, "key_type_not_allowed", 400, issuerToken],
      [{ dnsNames: ["api.test"] }, "forbidden", 403, outsider],
    ];
    for (const [body, code, status, token] of cases) {
      const r = await custos.call("POST", "/v1/pki/roles/web/issue", body, token);
      assert.equal(r.status, status, `${JSON.stringify(body)}: ${r.text}`);
      assert.equal(errorCode(r), code);
    }
    const csr = openssl([
      "req",
      "-new",
      "-newkey",
      "ed25519",
      "-nodes",
      "-keyout",
      join(dir, "ed.key"),
      "-subj",
      "/CN=api.test",
      "-out",
      join(dir, "ed.csr"),
    ]);
    assert.equal(csr.status, 0, csr.out);
    const edCsr = readFileSync(join(dir, "ed.csr"), "utf8");
    const r = await custos.call("POST", "/v1/pki/roles/web/sign", { csr: edCsr }, issuerToken);
    assert.equal(errorCode(r), "key_type_not_allowed", r.text);
    const garbage = await custos.call("POST", "/v1/pki/roles/web/sign", { csr: "not a csr" }, issuerToken);
    assert.equal(errorCode(garbage), "csr_invalid", garbage.text);

    assert.equal(await count(), before, "nothing was issued");
    const audit = await custos.call("GET", "/v1/audit?action=pki.issue&resource=pki/role/web&order=desc&limit=20");
    const records = (audit.body as Json).records as Json[];
    const refused = records.filter((x) => x.outcome !== "success").map((x) => [x.outcome, x.errorCode]);
    for (const code of ["name_not_allowed", "ttl_too_long", "key_type_not_allowed", "csr_invalid"]) {
      assert.ok(
        refused.some(([outcome, c]) => outcome === "failure" && c === code),
        `${code} audited: ${JSON.stringify(refused)}`,
      );
    }
    assert.ok(refused.some(([outcome, c]) => outcome === "denied" && c === "forbidden"));
    // The issuer's token can issue within the role.
    const ok = await custos.call("POST", "/v1/pki/roles/web/issue", { dnsNames: ["api.test"] }, issuerToken);
    assert.equal(ok.status, 200, ok.text);
  });

  test("renew keeps the key and names under a new serial; list and inspect show status", async () => {
    const first = await issue({ dnsNames: ["r.svc.test"], ttlSeconds: 600 });
    const renewed = await custos.call("POST", `/v1/pki/certs/${String(first.serial)}/renew`, { ttlSeconds: 1200 });
    assert.equal(renewed.status, 200, renewed.text);
    const second = renewed.body as Json;
    assert.notEqual(second.serial, first.serial);
    const a = new X509Certificate(String(first.certificate));
    const b = new X509Certificate(String(second.certificate));
    assert.ok(a.publicKey.equals(b.publicKey));
    assert.equal(a.subjectAltName, b.subjectAltName);
    const shown = await custos.call("GET", `/v1/pki/certs/${String(second.serial)}`);
    const view = (shown.body as Json).certificate as Json;
    assert.deepEqual([view.status, view.role, view.dnsNames], ["valid", "web", ["r.svc.test"]]);
    const listed = await custos.call("GET", "/v1/pki/certs?status=revoked");
    assert.ok(((listed.body as Json).certificates as Json[]).every((c) => c.status === "revoked"));
  });

  test("a consumer's private key is stored sealed: its bytes appear nowhere in the database or the log", async () => {
    const created = await custos.call("PUT", "/v1/pki/consumers/edge", { role: "web", dnsNames: ["edge.svc.test"] });
    assert.equal(created.status, 200, created.text);
    const material = await custos.call("GET", "/v1/pki/consumers/edge/certificate?role=web");
    assert.equal(material.status, 200, material.text);
    const pem = String((material.body as Json).privateKey);
    const der = createPrivateKey(pem).export({ type: "pkcs8", format: "der" });
    const scalar = createPrivateKey(pem).export({ format: "jwk" }).d as string;
    const needles = [der, Buffer.from(scalar, "base64url"), Buffer.from(pem), Buffer.from(der.toString("base64"))];
    for (const f of ["custos.db", "custos.db-wal", "server.log"]) {
      const path = join(custos.dir, f);
      if (!existsSync(path)) continue;
      const bytes = readFileSync(path);
      for (const needle of needles) assert.equal(bytes.indexOf(needle), -1, `${f} holds the private key`);
    }
    // The key still matches the certificate it was fetched with.
    const cert = new X509Certificate(String((material.body as Json).certificate));
    assert.ok(cert.checkPrivateKey(createPrivateKey(pem)));
  });

  test("CA rollover: a new intermediate issues, the old one stays trusted and keeps its CRL and OCSP", async () => {
    const old = await issue({ dnsNames: ["old.svc.test"] });
    const rotated = await custos.call("POST", "/v1/pki/issuers/rotate", {});
    assert.equal(rotated.status, 200, rotated.text);
    const body = rotated.body as { issuer: Json; retiring: Json };
    assert.deepEqual([body.issuer.id, body.issuer.state], ["int-2", "active"]);
    assert.deepEqual([body.retiring.id, body.retiring.state], ["int-1", "retiring"]);

    const fresh = await issue({ dnsNames: ["new.svc.test"] });
    assert.notEqual(fresh.chain, old.chain);
    const root = file("rollover-root.pem", custos.ca);
    for (const [name, issued] of [
      ["old", old],
      ["new", fresh],
    ] as const) {
      const v = openssl([
        "verify",
        "-CAfile",
        root,
        "-untrusted",
        file(`${name}-rollover-int.pem`, String(issued.chain)),
        file(`${name}-rollover.pem`, String(issued.certificate)),
      ]);
      assert.equal(v.status, 0, v.out);
    }
    const chain = (await fetchPublic(custos, "/v1/pki/chain.pem")).body.toString();
    assert.ok(chain.startsWith(String(fresh.chain)));

    const r = await custos.call("POST", `/v1/pki/certs/${String(old.serial)}/revoke`, { reason: "superseded" });
    assert.equal(r.status, 200, r.text);
    const crl = file("int-1.crl.pem", (await fetchPublic(custos, "/v1/pki/issuers/int-1/crl.pem")).body);
    const verified = openssl([
      "crl",
      "-in",
      crl,
      "-CAfile",
      file("int-1-chain.pem", `${String(old.chain)}${custos.ca}`),
      "-verify",
      "-text",
      "-noout",
    ]);
    assert.equal(verified.status, 0, verified.out);
    assert.match(verified.out, new RegExp(String(old.serial).toUpperCase()));
    const ocsp = openssl([
      "ocsp",
      "-issuer",
      file("int-1.pem", String(old.chain)),
      "-cert",
      file("old-ocsp.pem", String(old.certificate)),
      "-url",
      `${custos.url}/v1/pki/ocsp`,
      "-CAfile",
      root,
    ]);
    assert.match(ocsp.out, /Response verify OK/);
    assert.match(ocsp.out, /: revoked/);
  });
});

describe("Custos's own certificate", () => {
  test("renews while it serves traffic, without a restart", async () => {
    const custos = await startCustos({ tls: { serverCertTtlSeconds: 24, renewCheckSeconds: 1 } });
    try {
      const seen: string[] = [];
      let failures = 0;
      const deadline = Date.now() + 60_000;
      while (Date.now() < deadline && new Set(seen).size < 2) {
        const peer = await new Promise<string>((ok, fail) => {
          const socket = connect(
            { host: "127.0.0.1", port: custos.port, servername: "localhost", ca: custos.ca },
            () => {
              const raw = socket.getPeerCertificate().raw;
              socket.end();
              ok(createHash("sha256").update(raw).digest("hex"));
            },
          );
          socket.on("error", fail);
        }).catch(() => {
          failures++;
          return "";
        });
        if (peer) seen.push(peer);
        const health = await custos.call("GET", "/v1/health", undefined, null).catch(() => ({ status: 0 }));
        if (health.status !== 200) failures++;
        await new Promise((r) => setTimeout(r, 250));
      }
      const distinct = [...new Set(seen)];
      assert.equal(distinct.length, 2, "the listener moved to a new certificate");
      assert.equal(failures, 0);
      assert.equal(seen.indexOf(distinct[1] as string) > seen.lastIndexOf(distinct[0] as string), true);
      assert.equal(readFileSync(custos.logFile, "utf8").match(/custos is serving/g)?.length, 1, "one server start");
      const servers = await custos.call("GET", "/v1/pki/certs?role=custos-server");
      assert.equal(((servers.body as Json).certificates as Json[]).length, 2);
    } finally {
      await custos.dispose();
    }
  });

  test("an install from before the PKI (the core's bootstrap CA) migrates at its next start", async () => {
    const custos = await startCustos();
    try {
      await custos.stop();
      // Put the store and the TLS directory back as the core left them: no PKI schema
      // or rows, and a listener certificate from a bootstrap CA outside the PKI.
      const db = new Database(join(custos.dir, "custos.db"));
      db.exec(`DROP TABLE cert_consumer_agents; DROP TABLE cert_consumer_generations; DROP TABLE cert_consumers;
        DROP TABLE pki_roles; DROP TABLE pki_certificates; DROP TABLE pki_cas;
        DELETE FROM schema_migrations WHERE version = 2; DELETE FROM settings WHERE name LIKE 'pki.%';`);
      db.close();
      const tls = join(custos.dir, "tls");
      const made = openssl([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "30",
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=DNS:localhost,IP:127.0.0.1",
        "-keyout",
        join(tls, "server.key"),
        "-out",
        join(tls, "server.pem"),
      ]);
      assert.equal(made.status, 0, made.out);
      const bootstrap = readFileSync(join(tls, "server.pem"), "utf8");
      writeFileSync(join(tls, "ca.pem"), bootstrap);

      await custos.start();
      const ca = readFileSync(join(tls, "ca.pem"), "utf8");
      assert.notEqual(ca, bootstrap);
      assert.match(new X509Certificate(ca).subject, /Custos Root CA 1/);
      const served = readFileSync(join(tls, "server.pem"), "utf8");
      assert.notEqual(served, bootstrap);
      const peer = await new Promise<boolean>((ok, fail) => {
        const socket = connect({ host: "127.0.0.1", port: custos.port, servername: "localhost", ca }, () => {
          ok(socket.authorized);
          socket.end();
        });
        socket.on("error", fail);
      });
      assert.equal(peer, true, "a client trusting the new ca.pem connects");
    } finally {
      await custos.dispose();
    }
  });
});
