//! Domain → wire conversions shared by the gRPC services.

use chrono::{DateTime, Utc};
use prost_types::{ListValue, Struct, Timestamp, value::Kind};
use regorus::Value;

use crate::{decision::Decision, proto::v1};

/// A decision as the wire message.
pub(crate) fn decision_message(decision: Decision) -> v1::Decision {
    v1::Decision {
        allow: decision.allow(),
        obligations: Some(value_to_struct(decision.obligations())),
        decision_id: decision.id().to_string(),
        policy_revision: decision.policy_revision().to_string(),
        decided_at: Some(timestamp(decision.decided_at())),
        reasons: decision.into_reasons(),
    }
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
        Value::Number(_) => Kind::NumberValue(value_as_double(value)),
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

/// A number as a double: itself when regorus holds it as one, else the nearest.
pub(crate) fn value_as_double(value: &Value) -> f64 {
    match value {
        Value::Number(n) => n.as_f64().unwrap_or_else(|| nearest_double(value)),
        _ => f64::NAN,
    }
}

/// The double nearest a number regorus holds no exact double for (an integer past ±2^53,
/// or past the 64-bit range): a protobuf number is a double, and the nearest is the most
/// it can carry. Only a number beyond the doubles' range becomes infinite (refused where
/// inputs are validated). It takes the value because regorus does not export its number
/// type.
#[cold]
fn nearest_double(value: &Value) -> f64 {
    let Value::Number(n) = value else {
        return f64::NAN;
    };
    // `as` rounds an integer to the nearest double; Rust's parser rounds a decimal to it.
    n.as_i64()
        .map(|i| i as f64)
        .or_else(|| n.as_u64().map(|u| u as f64))
        .unwrap_or_else(|| n.format_decimal().parse().unwrap_or(f64::NAN))
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

    #[test]
    fn integers_without_an_exact_double_become_the_nearest() {
        for (json, nearest) in [
            ("9007199254740993", 9_007_199_254_740_992.0),
            ("-9007199254740993", -9_007_199_254_740_992.0),
            ("1795428000000000000", 1.795_428e18),
            ("18446744073709551615", 18_446_744_073_709_551_615.0),
            ("123456789012345678901234567890", 1.234_567_890_123_456_8e29),
        ] {
            let v = Value::from_json_str(&format!(r#"{{"n": {json}}}"#)).unwrap();
            assert_eq!(
                value_to_struct(&v).fields["n"].kind,
                Some(Kind::NumberValue(nearest)),
                "{json}"
            );
        }
    }
}
