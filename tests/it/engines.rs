//! The example policy set decides the same on the RVM (the serving path) and on the
//! interpreter (the path `stepgate test` exercises), across every step and many
//! variations of the example inputs.

use regorus::Value;
use stepgate::policy::{Entrypoint, PolicyOptions, PolicySet, PolicySource};

use super::support::unhurried;

fn example_set() -> PolicySet {
    // This compares the two engines, not their speed: a debug build on a busy machine
    // must not turn a slow evaluation, test or load into a failure (its flake: the set's
    // tests ran under the 100 ms evaluation limit).
    let options = unhurried(PolicyOptions::default());
    let source = PolicySource::read_dir("policies".as_ref(), &options.source_limits).unwrap();
    let set =
        PolicySet::load(source, &options, true).expect("the example set loads and its tests pass");
    assert_eq!(
        set.entrypoints()[0].engine,
        "rvm",
        "the example decision must run on the RVM"
    );
    set
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap()
}

/// Sets `pointer` (a JSON pointer) in `doc`, removing it when `value` is None.
fn with(
    doc: &serde_json::Value,
    pointer: &str,
    value: Option<serde_json::Value>,
) -> serde_json::Value {
    let mut doc = doc.clone();
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    if let Some(object) = doc.pointer_mut(parent).and_then(|p| p.as_object_mut()) {
        match value {
            Some(v) => object.insert(key.to_string(), v),
            None => object.remove(key),
        };
    }
    doc
}

#[test]
fn rvm_and_interpreter_agree_on_the_example_policies() {
    let set = example_set();
    let bases = [
        json(&std::fs::read_to_string("benches/inputs/issue.json").unwrap()),
        json(&std::fs::read_to_string("benches/inputs/agent_use.json").unwrap()),
    ];
    let steps = [
        "request",
        "approve",
        "issue",
        "use",
        "renew",
        "revoke",
        "close",
        "break_glass",
        "custom_step",
    ];
    let tweaks: Vec<(&str, Option<serde_json::Value>)> = vec![
        ("/step", None),
        ("/subject/owner", None),
        ("/subject/kind", Some(json("\"agent\""))),
        ("/resource/attributes/environment", Some(json("\"dev\""))),
        (
            "/resource/attributes/sensitivity",
            Some(json("\"critical\"")),
        ),
        ("/resource/attributes/sensitivity", Some(json("\"bogus\""))),
        ("/workflow/justification", None),
        ("/workflow/emergency", Some(json("true"))),
        ("/workflow/requester", Some(json("\"bob\""))),
        ("/grant/state", Some(json("\"REVOKED\""))),
        ("/grant/state", Some(json("\"PENDING\""))),
        ("/grant/expires_at", Some(json("\"2026-11-23T09:00:00Z\""))),
        ("/grant/max_uses", Some(json("3"))),
        ("/grant", None),
        ("/context/time", Some(json("\"2026-11-22T03:00:00Z\""))),
        ("/context/time", None),
        ("/caller/authenticated", Some(json("false"))),
        ("/caller/via", Some(json("\"tcp\""))),
        (
            "/approval",
            Some(json(r#"{"approver": "bob", "role": "asset_owner"}"#)),
        ),
        (
            "/approval",
            Some(json(r#"{"approver": "alice", "role": "asset_owner"}"#)),
        ),
        ("/requested_ttl_seconds", Some(json("999999"))),
        ("/agent/tool", Some(json("\"db.query\""))),
        (
            "/agent/arguments",
            Some(json(r#"{"sql": "DELETE FROM users"}"#)),
        ),
        (
            "/agent/delegation_chain",
            Some(json(r#"["a", "b", "c", "d", "e"]"#)),
        ),
        ("/agent/on_behalf_of", None),
    ];
    let mut compared = 0;
    let mut allowed = 0;
    for base in &bases {
        for step in steps {
            let stepped = with(base, "/step", Some(json(&format!("\"{step}\""))));
            for (pointer, value) in std::iter::once(("/none", None)).chain(tweaks.iter().cloned()) {
                let doc = with(&stepped, pointer, value);
                let input = Value::from_json_str(&doc.to_string()).unwrap();
                let rvm = set.evaluate(Entrypoint::Decision, input.clone());
                let interpreted = set.evaluate_interpreted(Entrypoint::Decision, input);
                assert_eq!(rvm, interpreted, "engines disagree on {doc}");
                let result = rvm.expect("the example decision never errors");
                assert!(
                    matches!(result["allow"], Value::Bool(_)),
                    "always a boolean allow: {doc}"
                );
                allowed += usize::from(result["allow"] == Value::from(true));
                compared += 1;
            }
        }
    }
    assert!(
        compared > 400 && allowed > 10,
        "compared {compared}, allowed {allowed}"
    );
}
