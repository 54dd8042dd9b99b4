// Drives stepgate's OPA REST API with OPA's own TypeScript SDK (@styra/opa), exactly as
// an application that talks to OPA would. Run by tests/it/opa_client.rs against a real
// server started with tests/it/opa_rest.rs's example policies:
//
//   node tests/opa-client/check.mjs http://127.0.0.1:8181
//
// Exits non-zero (with the failed assertion) when stepgate answers differently from OPA.
import assert from "node:assert/strict";
import { OPAClient } from "@styra/opa";

const url = process.argv[2];
if (!url) {
  console.error("usage: check.mjs SERVER_URL");
  process.exit(2);
}
const opa = new OPAClient(url);

// POST /v1/data/{path} with an input.
assert.equal(await opa.evaluate("example/allow", { user: "alice" }), true);
assert.equal(await opa.evaluate("example/allow", { user: "mallory" }), false);
assert.equal(await opa.evaluate("example/greeting", { user: "bob" }), "hello bob");
// GET /v1/data/{path} without one: a data document.
assert.deepEqual(await opa.evaluate("roles/alice"), ["admin"]);
// A package, narrowed by the SDK's fromResult.
assert.equal(
  await opa.evaluate("example", { user: "alice" }, { fromResult: (r) => r.allow }),
  true,
);
// An undefined document: no result.
assert.equal(await opa.evaluate("example/nothing", {}), undefined);
// POST /: the default decision (stepgate's decision entrypoint).
const decision = await opa.evaluateDefault({
  step: "use",
  action: "read",
  subject: { id: "svc-a" },
  context: { time: "t" },
});
assert.equal(decision.allow, true);
// An evaluation error is a rejected promise (HTTP 500, OPA's error body).
await assert.rejects(opa.evaluate("example/conflict", { clash: true }));
// Batches: stepgate has no batch endpoint, so the SDK falls back to single calls.
assert.deepEqual(
  await opa.evaluateBatch(
    "example/allow",
    { a: { user: "alice" }, b: { user: "bob" } },
    { fallback: true },
  ),
  { a: true, b: false },
);
console.log("ok: @styra/opa agrees");
