//! Domain → wire conversions shared by the gRPC services.

use chrono::{DateTime, Utc};
use prost_types::{ListValue, Struct, Timestamp, value::Kind};
use regorus::Value;
use tonic::Status;

use crate::{
    decision::{Decision, InvalidField},
    proto::v1,
};

/// A decision as the wire message.
pub(crate) fn decision_message(decision: Decision) -> v1::Decision {
    v1::Decision {
        allow: decision.allow,
        reasons: decision.reasons,
        obligations: Some(value_to_struct(&decision.obligations)),
        decision_id: decision.id.to_string(),
        policy_revision: decision.policy_revision.to_string(),
        decided_at: Some(timestamp(decision.decided_at)),
    }
}

/// An invalid field as `INVALID_ARGUMENT` naming it.
pub(crate) fn invalid_argument(err: InvalidField) -> Status {
    Status::invalid_argument(err.to_string())
}

/// A UTC time as a protobuf timestamp.
pub(crate) fn timestamp(at: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos().min(999_999_999) as i32,
    }
}

/// A regorus object as a protobuf `Struct` (anything else as an empty one).
pub(crate) fn value_to_struct(value: &Value) -> Struct {
    match value {
        Value::Object(object) => Struct {
            fields: object
                .iter()
                .map(|(k, v)| (key_string(k), value_to_proto(v)))
                .collect(),
        },
        _ => Struct::default(),
    }
}

fn key_string(key: &Value) -> String {
    match key {
        Value::String(s) => s.to_string(),
        other => other.to_json_str().unwrap_or_default(),
    }
}

fn value_to_proto(value: &Value) -> prost_types::Value {
    let kind = match value {
        Value::Null | Value::Undefined => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => Kind::StringValue(s.to_string()),
        Value::Array(items) => Kind::ListValue(ListValue {
            values: items.iter().map(value_to_proto).collect(),
        }),
        Value::Set(items) => Kind::ListValue(ListValue {
            values: items.iter().map(value_to_proto).collect(),
        }),
        Value::Object(_) => Kind::StructValue(value_to_struct(value)),
    };
    prost_types::Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn obligations_round_trip_to_struct() {
        let v = Value::from_json_str(
            r#"{"max_ttl_seconds": 900, "roles": ["a"], "nested": {"b": true, "n": null}}"#,
        )
        .unwrap();
        let s = value_to_struct(&v);
        assert_eq!(
            s.fields["max_ttl_seconds"].kind,
            Some(Kind::NumberValue(900.0))
        );
        assert!(matches!(&s.fields["roles"].kind, Some(Kind::ListValue(l)) if l.values.len() == 1));
        assert!(
            matches!(&s.fields["nested"].kind, Some(Kind::StructValue(n)) if n.fields.len() == 2)
        );
    }
}
