import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { formatValue, renderRecord, renderTable } from "../../src/cli/output.js";

describe("renderRecord", () => {
  test("aligns key: value lines, flattens objects and tabulates arrays of objects", () => {
    const text = renderRecord({
      name: "app-a",
      latestVersion: 2,
      rotationPeriodSeconds: null,
      policies: ["p1", "p2"],
      hsm: { status: "ok" },
      versions: [
        { version: 1, state: "active" },
        { version: 2, state: "active" },
      ],
    });
    assert.equal(
      text,
      [
        "name:                  app-a",
        "latestVersion:         2",
        "rotationPeriodSeconds: -",
        "policies:              p1, p2",
        "hsm.status:            ok",
        "",
        "versions:",
        "  version  state",
        "  1        active",
        "  2        active",
        "",
      ].join("\n"),
    );
  });

  test("empty lists show as -", () => {
    assert.equal(renderRecord({ members: [] }), "members: -\n");
  });
});

describe("renderTable", () => {
  test("aligns columns under a header of field names", () => {
    const text = renderTable([
      { name: "a", state: "enabled", description: "" },
      { name: "longer-name", state: "disabled", description: "x" },
    ]);
    assert.equal(text, "name         state     description\na            enabled\nlonger-name  disabled  x\n");
  });

  test("preferred columns pick and order what is present; omit drops", () => {
    const rows = [{ seq: 1, hash: "ab", action: "key.create", time: "t" }];
    assert.equal(
      renderTable(rows, { columns: ["seq", "time", "action", "absent"] }),
      "seq  time  action\n1    t     key.create\n",
    );
    assert.equal(renderTable(rows, { omit: ["hash"] }), "seq  action      time\n1    key.create  t\n");
  });

  test("falls back to all columns when none of the preferred ones exist", () => {
    assert.equal(renderTable([{ x: 1 }], { columns: ["name"] }), "x\n1\n");
  });

  test("no rows, no output", () => {
    assert.equal(renderTable([]), "");
  });
});

describe("formatValue", () => {
  test("renders each JSON kind", () => {
    assert.equal(formatValue(null), "-");
    assert.equal(formatValue(true), "true");
    assert.equal(formatValue([1, "b"]), "1, b");
    assert.equal(formatValue([{ a: 1 }]), '[{"a":1}]');
    assert.equal(formatValue("tab\there\nnewline"), "tab\there\ufffdnewline");
  });
});
