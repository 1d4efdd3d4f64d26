/** Assertions for the client's tests: a call must fail, and with a `ClientError`. */
import assert from "node:assert/strict";
import { ClientError } from "../../src/client/index.js";

/** The `ClientError` `promise` rejects with. */
export async function failure(promise: Promise<unknown>): Promise<ClientError> {
  try {
    await promise;
  } catch (e) {
    assert.ok(e instanceof ClientError, `expected ClientError, got ${String(e)}`);
    return e;
  }
  assert.fail("expected the request to fail");
}

/** The `ClientError` `fn` throws. */
export function sync(fn: () => unknown): ClientError {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof ClientError, `expected ClientError, got ${String(e)}`);
    return e;
  }
  assert.fail("expected a failure");
}
