import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { ReadCache } from "../../src/store/sqlite/read-cache.js";

describe("ReadCache", () => {
  test("keeps frozen values, drops the oldest past its limit, and clears", () => {
    const cache = new ReadCache<{ n: number }>(2);
    cache.set("a", { n: 1 });
    cache.set("b", { n: 2 });
    assert.ok(Object.isFrozen(cache.get("a")));
    cache.set("b", { n: 3 });
    assert.deepEqual(cache.get("a"), { n: 1 }, "replacing an entry evicts nothing");
    cache.set("c", { n: 4 });
    assert.equal(cache.get("a"), undefined, "the oldest went");
    assert.deepEqual([cache.get("b"), cache.get("c")], [{ n: 3 }, { n: 4 }]);
    cache.clear();
    assert.equal(cache.get("c"), undefined);
  });
});
