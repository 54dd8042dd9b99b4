//! The `stepgate.*` attributes a decision is exported with: the same keys and values on
//! its span and on its decision-log record sent over OTLP, from one list, so a query
//! written for one finds the other.

use std::{sync::Arc, time::Duration};

use opentelemetry::{KeyValue, StringValue, Value as OtelValue};
use regorus::Value;
use uuid::Uuid;

use super::Entry;
use crate::{document::KEYS, telemetry::attr};

/// A decision's attributes, held by value so they can travel to another thread: the
/// strings are shared with the input document and the policy set (no copy).
#[derive(Debug, Clone)]
pub(crate) struct DecisionAttributes {
    id: Uuid,
    allow: bool,
    step: Value,
    action: Value,
    subject_kind: Value,
    resource_type: Value,
    grant: GrantId,
    revision: Arc<str>,
    bundle_revision: Option<Arc<str>>,
    eval_duration: Duration,
}

/// Which grant the decision was about.
#[derive(Debug, Clone)]
enum GrantId {
    /// The grant the step acted on.
    Known(Uuid),
    /// The id a check's input names (anything but a string is left out).
    Given(Value),
}

impl DecisionAttributes {
    /// The attributes of the decision `entry` records.
    pub(crate) fn of(entry: &Entry<'_>) -> Self {
        let k = &*KEYS;
        let input = entry.input;
        Self {
            id: entry.id,
            allow: entry.allow,
            step: input[&k.step].clone(),
            action: input[&k.action].clone(),
            subject_kind: input[&k.subject][&k.kind].clone(),
            resource_type: input[&k.resource][&k.type_].clone(),
            grant: match entry.grant {
                Some(grant) => GrantId::Known(grant.id()),
                None => GrantId::Given(input[&k.grant][&k.id].clone()),
            },
            revision: entry.policy_revision.clone(),
            bundle_revision: entry.bundle_revision.cloned(),
            eval_duration: entry.eval_duration,
        }
    }

    /// Whether the decision allowed.
    pub(crate) fn allow(&self) -> bool {
        self.allow
    }

    /// Hands each attribute to `emit`, in a fixed order: decision id, allow, step,
    /// action, subject kind, resource type, grant id (those the input has as strings),
    /// policy revision, bundle revision (when the policies came from a bundle), evaluation
    /// time in microseconds.
    pub(crate) fn visit(&self, mut emit: impl FnMut(&'static str, OtelValue)) {
        let text = |value: &Value| match value {
            Value::String(s) => Some(OtelValue::String(StringValue::from(s.clone()))),
            _ => None,
        };
        emit(attr::DECISION_ID, self.id.to_string().into());
        emit(attr::DECISION_ALLOW, self.allow.into());
        for (key, value) in [
            (attr::STEP, &self.step),
            (attr::ACTION, &self.action),
            (attr::SUBJECT_KIND, &self.subject_kind),
            (attr::RESOURCE_TYPE, &self.resource_type),
        ] {
            if let Some(value) = text(value) {
                emit(key, value);
            }
        }
        match &self.grant {
            GrantId::Known(id) => emit(attr::GRANT_ID, id.to_string().into()),
            GrantId::Given(id) => {
                if let Some(id) = text(id) {
                    emit(attr::GRANT_ID, id);
                }
            }
        }
        emit(
            attr::POLICY_REVISION,
            StringValue::from(self.revision.clone()).into(),
        );
        if let Some(bundle) = &self.bundle_revision {
            emit(
                attr::BUNDLE_REVISION,
                StringValue::from(bundle.clone()).into(),
            );
        }
        emit(
            attr::EVAL_DURATION_US,
            i64::try_from(self.eval_duration.as_micros())
                .unwrap_or(i64::MAX)
                .into(),
        );
    }

    /// The attributes as span attributes.
    pub(crate) fn key_values(&self) -> Vec<KeyValue> {
        let mut attributes = Vec::with_capacity(10);
        self.visit(|key, value| attributes.push(KeyValue::new(key, value)));
        attributes
    }
}
