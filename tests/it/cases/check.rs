//! Cases in stepgate's Check shape over gRPC `Check` and `BatchCheck`, OPA REST and
//! AuthZEN: the input mapped onto each adapter's request (or the reason it cannot be),
//! each answer read back into an [`Answer`].

use std::net::SocketAddr;

use prost_types::{ListValue, Struct, value::Kind};
use serde::Deserialize;
use serde_json::{Map, Value as Json, json};
use stepgate::proto::v1::{
    AgentCall, BatchCheckRequest, CheckRequest, Context, Decision, Resource, Subject, Workflow,
    decision_service_client::DecisionServiceClient,
};
use tonic::transport::Channel;

use super::super::support::http_request;
use super::{
    Tally,
    model::{Adapter, Case, CaseFile},
    outcome::{Answer, Expect, Outcome, compare, toml_json},
    start,
};

/// A case's input: stepgate's Check request, as the input document names its fields.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    step: Option<String>,
    subject: Option<SubjectInput>,
    action: Option<String>,
    resource: Option<ResourceInput>,
    workflow: Option<WorkflowInput>,
    agent: Option<AgentInput>,
    context: Option<ContextInput>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubjectInput {
    id: Option<String>,
    kind: Option<String>,
    owner: Option<String>,
    attributes: Option<toml::Table>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourceInput {
    #[serde(rename = "type")]
    kind: Option<String>,
    id: Option<String>,
    attributes: Option<toml::Table>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkflowInput {
    id: Option<String>,
    requester: Option<String>,
    justification: Option<String>,
    emergency: Option<bool>,
    attributes: Option<toml::Table>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentInput {
    tool: Option<String>,
    arguments: Option<toml::Table>,
    on_behalf_of: Option<String>,
    delegation_chain: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ContextInput {
    source_ip: Option<String>,
    attributes: Option<toml::Table>,
}

type CheckCase = Case<toml::Table, Expect>;

/// A case read and mapped onto every adapter's request.
struct Prepared<'a> {
    case: &'a CheckCase,
    check: CheckRequest,
    /// The OPA REST input: the case's input as written, or why JSON cannot carry it.
    rest: Result<Json, String>,
    /// The AuthZEN evaluation, or why AuthZEN cannot express the case.
    authzen: Result<Json, String>,
}

impl<'a> Prepared<'a> {
    fn of(file: &str, case: &'a CheckCase) -> Self {
        let table = toml::Value::Table(case.input.clone());
        let input: Input = table
            .clone()
            .try_into()
            .unwrap_or_else(|e| panic!("{file}: case {:?}: input: {e}", case.name));
        let rest = toml_json(&table);
        let authzen = rest.clone().and_then(|_| authzen_evaluation(&input));
        Self {
            case,
            check: check_request(&input),
            rest,
            authzen,
        }
    }

    /// What `adapter` must answer, or what is wrong with the case's expectation.
    fn outcome(&self, adapter: Adapter) -> Result<Outcome, String> {
        self.case
            .expected(adapter)
            .outcome()
            .map_err(|e| format!("the expectation for {adapter}: {e}"))
    }
}

/// The adapters' endpoints on one server.
struct Endpoints {
    grpc: DecisionServiceClient<Channel>,
    http: SocketAddr,
    max_batch: usize,
}

/// Runs `tests/cases/<name>` over every adapter that can express each case.
pub async fn run_file(name: &str) {
    let file: CaseFile<toml::Table, Expect> = CaseFile::load(name, &Adapter::CHECK_SHAPED);
    let mut tally = Tally::new(name, &file.about);
    for (key, cases) in file.by_server() {
        let (server, max_batch) = start(&key).await;
        let mut endpoints = Endpoints {
            grpc: DecisionServiceClient::new(server.tcp_channel().await),
            http: server.http.expect("the HTTP listener is on"),
            max_batch,
        };
        let prepared: Vec<Prepared> = cases.iter().map(|c| Prepared::of(name, c)).collect();
        for case in &prepared {
            for adapter in [
                Adapter::Check,
                Adapter::Batch,
                Adapter::OpaRest,
                Adapter::Authzen,
                Adapter::AuthzenBatch,
            ] {
                if let Some(why) = file.skipped(case.case, adapter) {
                    tally.skip(&case.case.name, adapter, why);
                    continue;
                }
                let expected = match case.outcome(adapter) {
                    Ok(outcome) => outcome,
                    Err(e) => {
                        tally.record(&case.case.name, adapter, Err(e));
                        continue;
                    }
                };
                let answer = match endpoints.ask(adapter, case).await {
                    Ok(answer) => answer,
                    Err(why) => {
                        tally.cannot(case.case, adapter, &why);
                        continue;
                    }
                };
                tally.record(
                    &case.case.name,
                    adapter,
                    compare(&expected, &answer, adapter),
                );
            }
        }
        for adapter in [Adapter::BatchAll, Adapter::AuthzenBatchAll] {
            endpoints
                .ask_all(&file, adapter, &prepared, &mut tally)
                .await;
        }
        server.stop().await;
    }
    tally.finish();
}

impl Endpoints {
    /// `case`'s answer on `adapter`, or why the adapter cannot express it.
    async fn ask(&mut self, adapter: Adapter, case: &Prepared<'_>) -> Result<Answer, String> {
        Ok(match adapter {
            Adapter::Check => match self.grpc.check(case.check.clone()).await {
                Ok(reply) => decision_answer(reply.into_inner().decision),
                Err(status) => status_answer(&status),
            },
            Adapter::Batch => self.batch(vec![case.check.clone()]).await.remove(0),
            Adapter::OpaRest => {
                let input = case.rest.clone()?;
                let body = json!({ "input": input });
                rest_answer(post(self.http, "/v1/data/stepgate/decision", &body).await)
            }
            Adapter::Authzen => {
                let body = case.authzen.clone()?;
                authzen_answer(&post(self.http, "/access/v1/evaluation", &body).await)
            }
            Adapter::AuthzenBatch => self
                .authzen_batch(vec![case.authzen.clone()?])
                .await
                .remove(0),
            other => unreachable!("{other} asks for many cases at once"),
        })
    }

    /// Every deciding case `adapter` can express, in batches of at most the server's
    /// maximum, each item compared on its own.
    async fn ask_all(
        &mut self,
        file: &CaseFile<toml::Table, Expect>,
        adapter: Adapter,
        cases: &[Prepared<'_>],
        tally: &mut Tally,
    ) {
        let mut items: Vec<(&Prepared, Outcome)> = Vec::new();
        for case in cases {
            if let Some(why) = file.skipped(case.case, adapter) {
                tally.skip(&case.case.name, adapter, why);
                continue;
            }
            match case.outcome(adapter) {
                Ok(outcome @ Outcome::Decision { .. }) => {
                    if adapter == Adapter::AuthzenBatchAll
                        && let Err(why) = &case.authzen
                    {
                        tally.cannot(case.case, adapter, why);
                        continue;
                    }
                    items.push((case, outcome));
                }
                Ok(_) => tally.cannot(
                    case.case,
                    adapter,
                    "only deciding cases share a batch (a refused item refuses it whole)",
                ),
                Err(e) => tally.record(&case.case.name, adapter, Err(e)),
            }
        }
        for chunk in items.chunks(self.max_batch) {
            let answers = match adapter {
                Adapter::BatchAll => {
                    self.batch(chunk.iter().map(|(c, _)| c.check.clone()).collect())
                        .await
                }
                _ => {
                    let evaluations = chunk
                        .iter()
                        .map(|(c, _)| c.authzen.clone().unwrap_or_default())
                        .collect();
                    self.authzen_batch(evaluations).await
                }
            };
            for ((case, expected), answer) in chunk.iter().zip(&answers) {
                tally.record(&case.case.name, adapter, compare(expected, answer, adapter));
            }
        }
    }

    /// A `BatchCheck` of `checks`: one answer per check (the call's error for each, if
    /// it failed).
    async fn batch(&mut self, checks: Vec<CheckRequest>) -> Vec<Answer> {
        let count = checks.len();
        match self.grpc.batch_check(BatchCheckRequest { checks }).await {
            Ok(reply) => {
                let decisions = reply.into_inner().decisions;
                if decisions.len() != count {
                    let wrong = format!("{} decisions for {count} checks", decisions.len());
                    return vec![Answer::unreadable(None, wrong); count];
                }
                decisions
                    .into_iter()
                    .map(|d| decision_answer(Some(d)))
                    .collect()
            }
            Err(status) => vec![status_answer(&status); count],
        }
    }

    /// An AuthZEN `evaluations` call: one answer per evaluation, as [`Self::batch`].
    async fn authzen_batch(&self, evaluations: Vec<Json>) -> Vec<Answer> {
        let count = evaluations.len();
        let body = json!({ "evaluations": evaluations });
        let reply = post(self.http, "/access/v1/evaluations", &body).await;
        if reply.0 != 200 {
            return vec![authzen_answer(&reply); count];
        }
        match reply.1.get("evaluations").and_then(Json::as_array) {
            Some(answers) if answers.len() == count => answers
                .iter()
                .map(|a| authzen_answer(&(200, a.clone())))
                .collect(),
            _ => vec![
                Answer::unreadable(Some(200), format!("not {count} evaluations: {}", reply.1));
                count
            ],
        }
    }
}

/// `POST path` with a JSON body: the status and the body as JSON (a string if not).
async fn post(http: SocketAddr, path: &str, body: &Json) -> (u16, Json) {
    let reply = http_request(
        http,
        "POST",
        path,
        &[("content-type", "application/json")],
        &body.to_string(),
    )
    .await;
    let json = serde_json::from_str(&reply.body).unwrap_or(Json::String(reply.body));
    (reply.status, json)
}

/// An HTTP error as an [`Answer`]: OPA's `{"code", "message"}` body.
fn http_error(status: u16, body: &Json) -> Answer {
    let message = body
        .get("message")
        .and_then(Json::as_str)
        .map_or_else(|| body.to_string(), str::to_string);
    Answer::Error {
        code: None,
        status: Some(status),
        message,
    }
}

fn rest_answer((status, body): (u16, Json)) -> Answer {
    if status != 200 {
        return http_error(status, &body);
    }
    Answer::Result {
        result: body.get("result").cloned(),
        id: string_at(&body, "/decision_id"),
    }
}

fn authzen_answer((status, body): &(u16, Json)) -> Answer {
    if *status != 200 {
        return http_error(*status, body);
    }
    let reasons = body.pointer("/context/reasons").and_then(Json::as_array);
    match (body.get("decision").and_then(Json::as_bool), reasons) {
        (Some(allow), Some(reasons)) => Answer::Decision {
            allow,
            reasons: reasons
                .iter()
                .map(|r| r.as_str().map_or_else(|| r.to_string(), str::to_string))
                .collect(),
            obligations: None,
            id: string_at(body, "/context/decision_id"),
        },
        _ => Answer::unreadable(Some(200), format!("not an AuthZEN decision: {body}")),
    }
}

fn string_at(body: &Json, pointer: &str) -> String {
    body.pointer(pointer)
        .and_then(Json::as_str)
        .unwrap_or_default()
        .to_string()
}

fn decision_answer(decision: Option<Decision>) -> Answer {
    match decision {
        Some(d) => Answer::Decision {
            allow: d.allow,
            reasons: d.reasons,
            obligations: Some(d.obligations.map_or(json!({}), |o| struct_json(&o))),
            id: d.decision_id,
        },
        None => Answer::unreadable(None, "a response without a decision"),
    }
}

fn status_answer(status: &tonic::Status) -> Answer {
    Answer::Error {
        code: Some(status.code()),
        status: None,
        message: status.message().to_string(),
    }
}

/// The Check request of `input` (an absent string is empty, as in protobuf).
fn check_request(input: &Input) -> CheckRequest {
    let text = |s: &Option<String>| s.clone().unwrap_or_default();
    CheckRequest {
        step: text(&input.step),
        subject: input.subject.as_ref().map(|s| Subject {
            id: text(&s.id),
            kind: text(&s.kind),
            owner: text(&s.owner),
            attributes: s.attributes.as_ref().map(toml_struct),
        }),
        action: text(&input.action),
        resource: input.resource.as_ref().map(|r| Resource {
            r#type: text(&r.kind),
            id: text(&r.id),
            attributes: r.attributes.as_ref().map(toml_struct),
        }),
        workflow: input.workflow.as_ref().map(|w| Workflow {
            id: text(&w.id),
            requester: text(&w.requester),
            justification: text(&w.justification),
            emergency: w.emergency.unwrap_or_default(),
            attributes: w.attributes.as_ref().map(toml_struct),
        }),
        agent: input.agent.as_ref().map(|a| AgentCall {
            tool: text(&a.tool),
            arguments: a.arguments.as_ref().map(toml_struct),
            on_behalf_of: text(&a.on_behalf_of),
            delegation_chain: a.delegation_chain.clone().unwrap_or_default(),
        }),
        context: input.context.as_ref().map(|c| Context {
            source_ip: text(&c.source_ip),
            attributes: c.attributes.as_ref().map(toml_struct),
        }),
        grant_id: String::new(),
    }
}

/// The AuthZEN evaluation of `input` (spec Appendix C, read backwards), or why AuthZEN
/// cannot express it.
fn authzen_evaluation(input: &Input) -> Result<Json, String> {
    let json = |t: &toml::Table| toml_json(&toml::Value::Table(t.clone()));
    if input.subject.as_ref().is_some_and(|s| s.owner.is_some()) {
        return Err("AuthZEN has no subject owner".into());
    }
    if input.workflow.is_some() || input.agent.is_some() {
        return Err("AuthZEN has no workflow or agent call".into());
    }
    if input
        .context
        .as_ref()
        .is_some_and(|c| c.source_ip.is_some())
    {
        return Err("AuthZEN has no source IP".into());
    }
    let mut evaluation = Map::new();
    if let Some(s) = &input.subject {
        let mut subject = Map::new();
        put(&mut subject, "id", s.id.as_ref().map(|id| json!(id)));
        put(&mut subject, "type", s.kind.as_ref().map(|k| json!(k)));
        put(
            &mut subject,
            "properties",
            s.attributes.as_ref().map(json).transpose()?,
        );
        evaluation.insert("subject".into(), Json::Object(subject));
    }
    if let Some(action) = &input.action {
        evaluation.insert("action".into(), json!({ "name": action }));
    }
    if let Some(r) = &input.resource {
        let mut resource = Map::new();
        put(&mut resource, "type", r.kind.as_ref().map(|k| json!(k)));
        put(&mut resource, "id", r.id.as_ref().map(|id| json!(id)));
        put(
            &mut resource,
            "properties",
            r.attributes.as_ref().map(json).transpose()?,
        );
        evaluation.insert("resource".into(), Json::Object(resource));
    }
    let attributes = input.context.as_ref().and_then(|c| c.attributes.as_ref());
    // AuthZEN's step is `context.step`, defaulting to `use`; the whole context becomes
    // `context.attributes`, so a step other than `use` would show there.
    let step = match input.step.as_deref() {
        Some("use") => None,
        other => Some(other.unwrap_or_default()),
    };
    let context = match (attributes, step) {
        (Some(_), Some(_)) => {
            return Err("AuthZEN's context.step would show in input.context.attributes".into());
        }
        (Some(attributes), None) => Some(json(attributes)?),
        (None, Some(step)) => Some(json!({ "step": step })),
        (None, None) => input.context.as_ref().map(|_| json!({})),
    };
    put(&mut evaluation, "context", context);
    Ok(Json::Object(evaluation))
}

fn put(object: &mut Map<String, Json>, key: &str, value: Option<Json>) {
    if let Some(value) = value {
        object.insert(key.into(), value);
    }
}

/// A TOML table as a protobuf `Struct` (a non-finite float stays one: JSON has none,
/// protobuf does).
fn toml_struct(table: &toml::Table) -> Struct {
    Struct {
        fields: table
            .iter()
            .map(|(k, v)| (k.clone(), toml_proto(v)))
            .collect(),
    }
}

fn toml_proto(value: &toml::Value) -> prost_types::Value {
    let kind = match value {
        toml::Value::String(s) => Kind::StringValue(s.clone()),
        toml::Value::Integer(i) => Kind::NumberValue(*i as f64),
        toml::Value::Float(f) => Kind::NumberValue(*f),
        toml::Value::Boolean(b) => Kind::BoolValue(*b),
        toml::Value::Datetime(d) => Kind::StringValue(d.to_string()),
        toml::Value::Array(items) => Kind::ListValue(ListValue {
            values: items.iter().map(toml_proto).collect(),
        }),
        toml::Value::Table(table) => Kind::StructValue(toml_struct(table)),
    };
    prost_types::Value { kind: Some(kind) }
}

/// A protobuf `Struct` as JSON, whole numbers as integers (as policies wrote them): a
/// whole double in the 64-bit range is an integer exactly.
fn struct_json(s: &Struct) -> Json {
    fn value(v: &prost_types::Value) -> Json {
        const I64_RANGE: f64 = 9_223_372_036_854_775_808.0; // 2^63
        match &v.kind {
            None | Some(Kind::NullValue(_)) => Json::Null,
            Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < I64_RANGE => {
                json!(*n as i64)
            }
            Some(Kind::NumberValue(n)) => json!(n),
            Some(Kind::StringValue(s)) => json!(s),
            Some(Kind::BoolValue(b)) => json!(b),
            Some(Kind::StructValue(s)) => struct_json(s),
            Some(Kind::ListValue(l)) => Json::Array(l.values.iter().map(value).collect()),
        }
    }
    Json::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value(v)))
            .collect(),
    )
}
