//! What an allowed `request` grants, read from the policy's obligations (fail closed).

use std::time::Duration;

use chrono::TimeDelta;
use regorus::Value;

/// What an allowed `request` grants, from its obligations.
#[derive(Debug, PartialEq)]
pub(super) struct GrantTerms {
    pub(super) required_approvals: u32,
    pub(super) approval_timeout: TimeDelta,
    pub(super) ttl: TimeDelta,
    pub(super) max_uses: u64,
}

impl GrantTerms {
    /// `ttl` = min(requested, `max_ttl_seconds`); a grant with neither has no end and is
    /// refused. Malformed obligations fail closed.
    pub(super) fn from_obligations(
        obligations: &Value,
        requested: Option<TimeDelta>,
        default_timeout: Duration,
    ) -> Result<Self, String> {
        let cap = obligation_seconds(obligations, "max_ttl_seconds")?;
        let ttl = match (requested, cap) {
            (Some(requested), Some(cap)) => requested.min(cap),
            (Some(only), None) | (None, Some(only)) => only,
            (None, None) => return Err("no ttl: the request sets none and the policy's obligations give no max_ttl_seconds".into()),
        };
        let required_approvals = obligation_count(obligations, "required_approvals")?.unwrap_or(0);
        let required_approvals = u32::try_from(required_approvals)
            .map_err(|_| "obligation required_approvals is too large".to_string())?;
        let approval_timeout = obligation_seconds(obligations, "approval_timeout_seconds")?
            .unwrap_or_else(|| TimeDelta::from_std(default_timeout).unwrap_or(TimeDelta::hours(1)));
        let max_uses = obligation_count(obligations, "max_uses")?.unwrap_or(0);
        Ok(Self {
            required_approvals,
            approval_timeout,
            ttl,
            max_uses,
        })
    }
}

/// A whole, non-negative count obligation; absent → `None`; anything else fails closed.
fn obligation_count(obligations: &Value, name: &str) -> Result<Option<u64>, String> {
    match &obligations[name] {
        Value::Undefined | Value::Null => Ok(None),
        Value::Number(n) => n.as_u64().map(Some).ok_or_else(|| {
            format!("obligation {name} is not a whole non-negative number (fail closed)")
        }),
        _ => Err(format!("obligation {name} is not a number (fail closed)")),
    }
}

/// A positive number of seconds; absent → `None`; anything else fails closed.
pub(super) fn obligation_seconds(
    obligations: &Value,
    name: &str,
) -> Result<Option<TimeDelta>, String> {
    match obligation_count(obligations, name)? {
        None => Ok(None),
        Some(0) => Err(format!("obligation {name} is zero (fail closed)")),
        Some(secs) => Ok(Some(
            TimeDelta::try_seconds(i64::try_from(secs).unwrap_or(i64::MAX))
                .unwrap_or(TimeDelta::MAX),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obligations(json: &str) -> Value {
        Value::from_json_str(json).unwrap()
    }

    #[test]
    fn terms_cap_the_ttl_and_read_every_obligation() {
        let terms = GrantTerms::from_obligations(
            &obligations(r#"{"max_ttl_seconds": 900, "required_approvals": 2, "approval_timeout_seconds": 60, "max_uses": 5}"#),
            Some(TimeDelta::hours(2)),
            Duration::from_secs(3600),
        )
        .unwrap();
        assert_eq!(
            terms,
            GrantTerms {
                required_approvals: 2,
                approval_timeout: TimeDelta::seconds(60),
                ttl: TimeDelta::seconds(900),
                max_uses: 5
            }
        );
        let terms = GrantTerms::from_obligations(
            &obligations("{}"),
            Some(TimeDelta::seconds(30)),
            Duration::from_secs(7),
        )
        .unwrap();
        assert_eq!(
            (terms.ttl, terms.required_approvals, terms.approval_timeout),
            (TimeDelta::seconds(30), 0, TimeDelta::seconds(7))
        );
    }

    #[test]
    fn malformed_or_missing_terms_fail_closed() {
        for (json, requested) in [
            ("{}", None),
            (r#"{"max_ttl_seconds": "900"}"#, None),
            (r#"{"max_ttl_seconds": 0}"#, None),
            (r#"{"max_ttl_seconds": 1.5}"#, None),
            (r#"{"max_ttl_seconds": 60, "required_approvals": -1}"#, None),
            (
                r#"{"max_ttl_seconds": 60, "max_uses": true}"#,
                Some(TimeDelta::seconds(5)),
            ),
        ] {
            assert!(
                GrantTerms::from_obligations(&obligations(json), requested, Duration::from_secs(1))
                    .is_err(),
                "{json}"
            );
        }
    }
}
