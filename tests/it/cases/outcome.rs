//! What a Check-shaped case expects ([`Expect`] as written, [`Outcome`] as checked),
//! what an adapter answered ([`Answer`]), and the comparison of the two, which says
//! what differs.

use std::fmt;

use serde::Deserialize;
use serde_json::Value as Json;
use tonic::Code;

use super::model::Adapter;

/// An expectation as a case file writes it (`expect = {...}`, `on.ADAPTER = {...}`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// A decision: `allow`.
    allow: Option<bool>,
    /// ...with exactly these reasons.
    reasons: Option<Vec<String>>,
    /// ...with a reason containing each of these.
    reasons_contain: Option<Vec<String>>,
    /// ...with these obligations (where the adapter returns them).
    obligations: Option<toml::Table>,
    /// A refused request: the field and the problem (`subject.id: required`), which
    /// each adapter prefixes with where the input sits in its request.
    refused: Option<String>,
    /// Any other error: a part of its message.
    error: Option<String>,
    /// The gRPC code of a refusal or error (a refusal's defaults to `INVALID_ARGUMENT`).
    code: Option<String>,
    /// The HTTP status of a refusal or error (a refusal's defaults to 400).
    status: Option<u16>,
    /// OPA REST only: the raw result the policy returned.
    result: Option<toml::Value>,
    /// OPA REST only: `true` when the policy's result is undefined (no `result`).
    undefined: Option<bool>,
}

/// What an adapter must answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A decision.
    Decision {
        allow: bool,
        reasons: Option<Vec<String>>,
        reasons_contain: Vec<String>,
        obligations: Option<Json>,
    },
    /// A refusal naming the field, as `INVALID_ARGUMENT` / HTTP 400 unless told.
    Refused {
        message: String,
        code: Code,
        status: u16,
    },
    /// An error whose message contains `part`.
    Failed {
        part: String,
        code: Option<Code>,
        status: Option<u16>,
    },
    /// OPA REST's raw result (`None`: undefined).
    Result(Option<Json>),
}

impl Expect {
    /// The outcome this expectation describes, or what is wrong with it.
    pub fn outcome(&self) -> Result<Outcome, String> {
        let decision =
            self.reasons.is_some() || self.reasons_contain.is_some() || self.obligations.is_some();
        let result = self.result.is_some() || self.undefined.is_some();
        let error = self.code.is_some() || self.status.is_some();
        let kinds = [
            self.allow.is_some(),
            self.refused.is_some(),
            self.error.is_some(),
            result,
        ];
        if kinds.iter().filter(|k| **k).count() != 1 {
            return Err("give exactly one of allow, refused, error and result/undefined".into());
        }
        let code = self.code.as_deref().map(grpc_code).transpose()?;
        if let Some(allow) = self.allow {
            if error {
                return Err("a decision has no code or status".into());
            }
            return Ok(Outcome::Decision {
                allow,
                reasons: self.reasons.clone(),
                reasons_contain: self.reasons_contain.clone().unwrap_or_default(),
                obligations: self
                    .obligations
                    .as_ref()
                    .map(|o| toml_json(&toml::Value::Table(o.clone())))
                    .transpose()?,
            });
        }
        if decision {
            return Err("reasons and obligations belong to a decision (allow)".into());
        }
        if let Some(message) = &self.refused {
            return Ok(Outcome::Refused {
                message: message.clone(),
                code: code.unwrap_or(Code::InvalidArgument),
                status: self.status.unwrap_or(400),
            });
        }
        if let Some(part) = &self.error {
            return Ok(Outcome::Failed {
                part: part.clone(),
                code,
                status: self.status,
            });
        }
        if error {
            return Err("a result has no code or status".into());
        }
        match (&self.result, self.undefined) {
            (Some(result), None) => Ok(Outcome::Result(Some(toml_json(result)?))),
            (None, Some(true)) => Ok(Outcome::Result(None)),
            _ => Err("give result or undefined = true, not both".into()),
        }
    }
}

/// An adapter's answer, read into one shape.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// A decision (`obligations` where the adapter returns them).
    Decision {
        allow: bool,
        reasons: Vec<String>,
        obligations: Option<Json>,
        id: String,
    },
    /// OPA REST's 200: the raw result, if defined.
    Result { result: Option<Json>, id: String },
    /// A gRPC status, or an HTTP error with OPA's `{"code", "message"}` body.
    Error {
        code: Option<Code>,
        status: Option<u16>,
        message: String,
    },
}

impl Answer {
    /// An error answer for something the runner could not read.
    pub fn unreadable(status: Option<u16>, message: impl Into<String>) -> Self {
        Answer::Error {
            code: None,
            status,
            message: message.into(),
        }
    }
}

/// Checks `answer` against `expected` for `adapter`: `Err` says what differs.
pub fn compare(expected: &Outcome, answer: &Answer, adapter: Adapter) -> Result<(), String> {
    let differs = || Err(format!("expected {expected}, got {answer}"));
    match (expected, answer) {
        (
            Outcome::Decision {
                allow,
                reasons,
                reasons_contain,
                obligations,
            },
            Answer::Decision {
                allow: got_allow,
                reasons: got_reasons,
                obligations: got_obligations,
                id,
            },
        ) => {
            let contained = reasons_contain
                .iter()
                .all(|part| got_reasons.iter().any(|r| r.contains(part.as_str())));
            let obligations_match = match (obligations, got_obligations) {
                (Some(want), Some(got)) => want == got,
                _ => true,
            };
            if allow != got_allow
                || reasons.as_ref().is_some_and(|r| r != got_reasons)
                || !contained
                || !obligations_match
            {
                return differs();
            }
            if id.is_empty() {
                return Err(format!("{answer} carries no decision id"));
            }
            Ok(())
        }
        (Outcome::Decision { .. }, Answer::Result { result, id }) => {
            // OPA REST answers the policy's raw result: a well-formed decision object
            // is compared as the decision it is.
            match result.as_ref().and_then(decision_of) {
                Some((allow, reasons, obligations)) => compare(
                    expected,
                    &Answer::Decision {
                        allow,
                        reasons,
                        obligations: Some(obligations),
                        id: id.clone(),
                    },
                    adapter,
                ),
                None => differs(),
            }
        }
        (Outcome::Result(want), Answer::Result { result, .. }) if want == result => Ok(()),
        (
            Outcome::Refused {
                message,
                code,
                status,
            },
            Answer::Error {
                code: got_code,
                status: got_status,
                message: got_message,
            },
        ) => {
            let full = format!("{}{message}", refusal_prefix(adapter));
            let transport_matches = match adapter_transport(adapter) {
                Transport::Grpc => *got_code == Some(*code),
                Transport::Http => *got_status == Some(*status),
            };
            if !transport_matches || *got_message != full {
                return Err(format!(
                    "expected {} {full:?}, got {answer}",
                    expected_status(adapter, Some(*code), Some(*status))
                ));
            }
            Ok(())
        }
        (
            Outcome::Failed { part, code, status },
            Answer::Error {
                code: got_code,
                status: got_status,
                message,
            },
        ) => {
            let transport_matches = match adapter_transport(adapter) {
                Transport::Grpc => code.is_some() && got_code == code,
                Transport::Http => status.is_some() && got_status == status,
            };
            if !transport_matches || !message.contains(part.as_str()) {
                return differs();
            }
            Ok(())
        }
        _ => differs(),
    }
}

/// Where an adapter puts the case's input in its request, as refusals name it.
fn refusal_prefix(adapter: Adapter) -> &'static str {
    match adapter {
        Adapter::Batch => "checks[0].",
        Adapter::AuthzenBatch => "evaluations[0].",
        Adapter::OpaRest => "input.",
        _ => "",
    }
}

enum Transport {
    Grpc,
    Http,
}

fn adapter_transport(adapter: Adapter) -> Transport {
    match adapter {
        Adapter::Check | Adapter::Batch | Adapter::BatchAll | Adapter::ExtAuthz => Transport::Grpc,
        _ => Transport::Http,
    }
}

fn expected_status(adapter: Adapter, code: Option<Code>, status: Option<u16>) -> String {
    match adapter_transport(adapter) {
        Transport::Grpc => code.map_or("a gRPC error (no code given)".into(), |c| {
            code_name(c).to_string()
        }),
        Transport::Http => status.map_or("an HTTP error (no status given)".into(), |s| {
            format!("HTTP {s}")
        }),
    }
}

/// `(allow, reasons, obligations)` of a well-formed decision object, as stepgate reads
/// one: a boolean `allow`, `reasons` absent or strings, `obligations` absent or an
/// object.
fn decision_of(result: &Json) -> Option<(bool, Vec<String>, Json)> {
    let allow = result.get("allow")?.as_bool()?;
    let reasons = match result.get("reasons") {
        None => Vec::new(),
        Some(list) => list
            .as_array()?
            .iter()
            .map(|r| r.as_str().map(str::to_string))
            .collect::<Option<_>>()?,
    };
    let obligations = match result.get("obligations") {
        None => Json::Object(Default::default()),
        Some(o) if o.is_object() => o.clone(),
        Some(_) => return None,
    };
    Some((allow, reasons, obligations))
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Decision {
                allow,
                reasons,
                reasons_contain,
                obligations,
            } => {
                write!(f, "allow={allow}")?;
                if let Some(reasons) = reasons {
                    write!(f, " reasons={reasons:?}")?;
                }
                if !reasons_contain.is_empty() {
                    write!(f, " reasons containing {reasons_contain:?}")?;
                }
                if let Some(obligations) = obligations {
                    write!(f, " obligations={obligations}")?;
                }
                Ok(())
            }
            Outcome::Refused {
                message,
                code,
                status,
            } => write!(
                f,
                "a refusal {message:?} ({} / HTTP {status})",
                code_name(*code)
            ),
            Outcome::Failed { part, code, status } => write!(
                f,
                "an error containing {part:?} ({} / {})",
                code.map_or("no gRPC code given", code_name),
                status.map_or("no HTTP status given".into(), |s| format!("HTTP {s}"))
            ),
            Outcome::Result(None) => f.write_str("an undefined result"),
            Outcome::Result(Some(result)) => write!(f, "the result {result}"),
        }
    }
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Answer::Decision {
                allow,
                reasons,
                obligations,
                ..
            } => {
                write!(f, "allow={allow} reasons={reasons:?}")?;
                if let Some(obligations) = obligations {
                    write!(f, " obligations={obligations}")?;
                }
                Ok(())
            }
            Answer::Result { result: None, .. } => f.write_str("an undefined result"),
            Answer::Result {
                result: Some(result),
                ..
            } => write!(f, "the result {result}"),
            Answer::Error {
                code,
                status,
                message,
            } => {
                f.write_str("an error ")?;
                if let Some(code) = code {
                    write!(f, "{} ", code_name(*code))?;
                }
                if let Some(status) = status {
                    write!(f, "HTTP {status} ")?;
                }
                write!(f, "{message:?}")
            }
        }
    }
}

/// gRPC status names, by code.
const CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The gRPC code called `name` (`INVALID_ARGUMENT`).
pub fn grpc_code(name: &str) -> Result<Code, String> {
    CODE_NAMES
        .iter()
        .position(|n| *n == name)
        .map(|i| Code::from(i as i32))
        .ok_or_else(|| format!("{name:?} is not a gRPC code name"))
}

/// `code`'s name, as case files write it.
pub fn code_name(code: Code) -> &'static str {
    CODE_NAMES
        .get(i32::from(code) as usize)
        .copied()
        .unwrap_or("?")
}

/// A TOML value as JSON; a non-finite number has no JSON form.
pub fn toml_json(value: &toml::Value) -> Result<Json, String> {
    Ok(match value {
        toml::Value::String(s) => Json::String(s.clone()),
        toml::Value::Integer(i) => Json::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(Json::Number)
            .ok_or_else(|| format!("JSON has no number {f}"))?,
        toml::Value::Boolean(b) => Json::Bool(*b),
        toml::Value::Datetime(d) => Json::String(d.to_string()),
        toml::Value::Array(items) => {
            Json::Array(items.iter().map(toml_json).collect::<Result<_, _>>()?)
        }
        toml::Value::Table(table) => Json::Object(
            table
                .iter()
                .map(|(k, v)| Ok((k.clone(), toml_json(v)?)))
                .collect::<Result<_, String>>()?,
        ),
    })
}
