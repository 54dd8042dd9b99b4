//! The caller's trace position, read from request headers (W3C `traceparent`, B3 single
//! `b3` and multi `X-B3-*`). Adapters extract it; the decision pipeline only ever sees a
//! [`ParentContext`], never raw headers.
//!
//! W3C uses the SDK's propagator. B3 is read here: its only Rust propagator ships in
//! `opentelemetry-zipkin`, which is deprecated as a whole, and reading B3 is a few
//! lines of the format's spec (openzipkin/b3-propagation).

use std::sync::LazyLock;

use http::HeaderMap;
use opentelemetry::{
    Context,
    propagation::{Extractor, TextMapPropagator},
    trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState},
};
use opentelemetry_sdk::propagation::TraceContextPropagator;

static W3C: LazyLock<TraceContextPropagator> = LazyLock::new(TraceContextPropagator::new);

/// The remote parent of a decision span: the caller's span, when the request carried a
/// valid trace header. Cheap to clone (a reference count).
#[derive(Debug, Clone, Default)]
pub struct ParentContext(Option<Context>);

impl ParentContext {
    /// No parent: the decision span starts a new trace.
    pub fn none() -> Self {
        Self(None)
    }

    /// The parent named by `headers` (gRPC metadata or HTTP headers): W3C
    /// `traceparent` first, then B3. Invalid or absent headers give no parent.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        // Most calls carry no trace header: two map probes and no allocation.
        let w3c = headers.contains_key("traceparent");
        let b3 = headers.contains_key("b3") || headers.contains_key("x-b3-traceid");
        if !w3c && !b3 {
            return Self(None);
        }
        if w3c {
            let cx = W3C.extract_with_context(&Context::new(), &Headers(headers));
            if cx.span().span_context().is_valid() {
                return Self(Some(cx));
            }
        }
        if b3 && let Some(span) = b3_single(headers).or_else(|| b3_multi(headers)) {
            return Self(Some(Context::new().with_remote_span_context(span)));
        }
        Self(None)
    }

    /// The context to start a child span in (an empty one when there is no parent).
    pub(crate) fn context(&self) -> Option<&Context> {
        self.0.as_ref()
    }

    /// The caller's span, if any.
    pub fn span_context(&self) -> Option<SpanContext> {
        self.0.as_ref().map(|cx| cx.span().span_context().clone())
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A B3 id: 16 or 32 lowercase hex digits (64-bit trace ids are left-padded).
fn b3_trace_id(text: &str) -> Option<TraceId> {
    let valid = matches!(text.len(), 16 | 32) && text.bytes().all(|b| b.is_ascii_hexdigit());
    let id = TraceId::from_hex(text).ok().filter(|_| valid)?;
    (id != TraceId::INVALID).then_some(id)
}

fn b3_span_id(text: &str) -> Option<SpanId> {
    let valid = text.len() == 16 && text.bytes().all(|b| b.is_ascii_hexdigit());
    let id = SpanId::from_hex(text).ok().filter(|_| valid)?;
    (id != SpanId::INVALID).then_some(id)
}

/// B3 sampling state: `1`/`d` (debug) sampled, `0` not, absent = let the sampler decide
/// (treated as sampled, as a parent-based sampler would have it otherwise).
fn b3_flags(sampled: Option<&str>) -> Option<TraceFlags> {
    match sampled {
        None | Some("1") | Some("d") | Some("true") => Some(TraceFlags::SAMPLED),
        Some("0") | Some("false") => Some(TraceFlags::default()),
        Some(_) => None,
    }
}

/// `b3: {trace}-{span}[-{sampled}[-{parent}]]`.
fn b3_single(headers: &HeaderMap) -> Option<SpanContext> {
    let mut parts = header(headers, "b3")?.split('-');
    let trace = b3_trace_id(parts.next()?)?;
    let span = b3_span_id(parts.next()?)?;
    let flags = b3_flags(parts.next())?;
    Some(SpanContext::new(trace, span, flags, true, TraceState::NONE))
}

/// `X-B3-TraceId`, `X-B3-SpanId`, `X-B3-Sampled` / `X-B3-Flags: 1` (debug).
fn b3_multi(headers: &HeaderMap) -> Option<SpanContext> {
    let trace = b3_trace_id(header(headers, "x-b3-traceid")?)?;
    let span = b3_span_id(header(headers, "x-b3-spanid")?)?;
    let flags = if header(headers, "x-b3-flags") == Some("1") {
        TraceFlags::SAMPLED
    } else {
        b3_flags(header(headers, "x-b3-sampled"))?
    };
    Some(SpanContext::new(trace, span, flags, true, TraceState::NONE))
}

/// `http::HeaderMap` as an OpenTelemetry extractor (header names are lowercase there).
struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, v.parse().unwrap());
        }
        map
    }

    #[test]
    fn w3c_b3_single_and_b3_multi_are_read() {
        let w3c = ParentContext::from_headers(&headers(&[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )]));
        let sc = w3c.span_context().unwrap();
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_remote() && sc.is_sampled());

        let single = ParentContext::from_headers(&headers(&[(
            "b3",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1",
        )]));
        assert_eq!(
            single.span_context().unwrap().span_id().to_string(),
            "e457b5a2e4d86bd1"
        );

        let multi = ParentContext::from_headers(&headers(&[
            ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
            ("x-b3-spanid", "05e3ac9a4f6e3b90"),
            ("x-b3-sampled", "0"),
        ]));
        let sc = multi.span_context().unwrap();
        assert_eq!(
            sc.trace_id().to_string(),
            "80f198ee56343ba864fe8b2a57d3eff7"
        );
        assert!(!sc.is_sampled());

        // A 64-bit trace id is accepted and left-padded.
        let short =
            ParentContext::from_headers(&headers(&[("b3", "a3ce929d0e0e4736-00f067aa0ba902b7")]));
        assert_eq!(
            short.span_context().unwrap().trace_id().to_string(),
            "0000000000000000a3ce929d0e0e4736"
        );
    }

    #[test]
    fn absent_or_invalid_headers_give_no_parent() {
        assert!(
            ParentContext::from_headers(&HeaderMap::new())
                .span_context()
                .is_none()
        );
        let bad = headers(&[("traceparent", "00-zz-00f067aa0ba902b7-01")]);
        assert!(ParentContext::from_headers(&bad).span_context().is_none());
        for b3 in [
            "80f198ee56343ba864fe8b2a57d3eff7",
            "80f198ee56343ba864fe8b2a57d3eff7-xyz",
            "00000000000000000000000000000000-e457b5a2e4d86bd1-1",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-maybe",
            "0",
        ] {
            let map = headers(&[("b3", b3)]);
            assert!(
                ParentContext::from_headers(&map).span_context().is_none(),
                "{b3}"
            );
        }
        // An invalid traceparent does not hide a valid B3 header.
        let mut both = bad;
        both.insert(
            "b3",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"
                .parse()
                .unwrap(),
        );
        assert!(ParentContext::from_headers(&both).span_context().is_some());
    }
}
