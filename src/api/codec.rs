//! The protobuf codec of every gRPC service the server carries: prost's wire format,
//! with a request that cannot be decoded answered `INVALID_ARGUMENT` naming what failed.
//!
//! tonic-prost's codec answers every decode error `INTERNAL "failed to decode Protobuf
//! message"`, which reads as a server fault and names nothing. A malformed request is the
//! caller's fault: [`Malformed`] says which kind (not protobuf, nested past prost's
//! recursion limit, invalid UTF-8 in a string field) and where, and is the one mapping
//! from a [`prost::DecodeError`] to a [`Status`]. The generated stepgate.v1 services use
//! [`StrictCodec`] through `build.rs` (`codec_path`), and so do the Envoy ext_authz and
//! health services, whose server code `build.rs` generates for it (`manual_services.rs`);
//! server reflection's request stream is checked with the same mapping
//! (`checked_stream.rs`).

use std::marker::PhantomData;

use prost::Message;
use tonic::{
    Status,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder},
};
use tonic_prost::ProstEncoder;

use super::error::status;

/// How deep prost decodes nested messages before it refuses (its `RECURSION_LIMIT`, which
/// the crate does not export).
pub(crate) const PROTOBUF_NESTING_LIMIT: usize = 100;

/// prost's wording of the kinds of decode error it does not expose as a type
/// (`DecodeErrorKind` is private): pinned by this module's tests.
const RECURSION_LIMIT_REACHED: &str = "recursion limit reached";
const INVALID_STRING: &str = "invalid string value: data is not UTF-8 encoded";
const DISPLAY_PREFIX: &str = "failed to decode Protobuf message: ";

/// A request message that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// Messages nested past prost's recursion limit.
    #[error(
        "request: nested too deeply (protobuf messages nest at most {PROTOBUF_NESTING_LIMIT} levels)"
    )]
    NestedTooDeeply,
    /// A string field whose bytes are not UTF-8.
    #[error("request: invalid UTF-8 in a string field{}", at(.field))]
    InvalidUtf8 {
        /// The field's path from the request (`subject.id`), when prost knows it.
        field: String,
    },
    /// Anything else: not protobuf, truncated, a wrong wire type.
    #[error("request: invalid protobuf: {problem}{}", at(.field))]
    InvalidProtobuf {
        /// prost's description of the problem.
        problem: String,
        /// The field's path from the request, when prost knows it.
        field: String,
    },
}

fn at(field: &str) -> String {
    if field.is_empty() {
        String::new()
    } else {
        format!(" (at {field})")
    }
}

impl Malformed {
    /// Classifies prost's error. prost exposes only its text: `failed to decode Protobuf
    /// message: ` then one `Message.field: ` per level (innermost first), then the kind.
    pub(crate) fn of(error: &prost::DecodeError) -> Self {
        let text = error.to_string();
        let mut rest = text.strip_prefix(DISPLAY_PREFIX).unwrap_or(&text);
        let mut path = Vec::new();
        while let Some((level, after)) = rest.split_once(": ") {
            // A level is `Message.field`: one word with a dot; a kind's text has spaces.
            match level.split_once('.') {
                Some((message, field))
                    if !message.is_empty() && !field.is_empty() && !level.contains(' ') =>
                {
                    path.push(field);
                    rest = after;
                }
                _ => break,
            }
        }
        path.reverse();
        let field = path.join(".");
        match rest {
            RECURSION_LIMIT_REACHED => Self::NestedTooDeeply,
            INVALID_STRING => Self::InvalidUtf8 { field },
            problem => Self::InvalidProtobuf {
                problem: problem.to_string(),
                field,
            },
        }
    }
}

/// The one answer to a request message prost could not decode: `INVALID_ARGUMENT` with
/// what failed, logged (at debug: a peer sending garbage must not flood the log).
pub(crate) fn refusal(error: &prost::DecodeError) -> Status {
    let malformed = Malformed::of(error);
    tracing::debug!(%malformed, "malformed request refused");
    status(malformed)
}

/// prost's codec with [`Malformed`] decode errors: encodes `T`, decodes `U`.
#[derive(Debug, Clone, Copy)]
pub struct StrictCodec<T, U>(PhantomData<fn(T) -> U>);

impl<T, U> Default for StrictCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for StrictCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = StrictDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrictDecoder(PhantomData)
    }
}

/// Decodes a `U`, a failure being [`Malformed`].
#[derive(Debug, Clone, Copy)]
pub struct StrictDecoder<U>(PhantomData<fn() -> U>);

impl<U: Message + Default> Decoder for StrictDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|error| refusal(&error))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

#[cfg(test)]
mod tests {
    use prost_types::{Struct, Value, value::Kind};

    use super::*;
    use crate::proto::v1::{CheckRequest, Subject};

    fn decode(bytes: &[u8]) -> Malformed {
        Malformed::of(&CheckRequest::decode(bytes).expect_err("malformed"))
    }

    /// A `Struct` holding `depth` levels of `Struct` (the outermost included).
    fn nested(depth: usize) -> Struct {
        let mut inner = Struct::default();
        for _ in 1..depth {
            inner = Struct {
                fields: [(
                    "a".to_string(),
                    Value {
                        kind: Some(Kind::StructValue(inner)),
                    },
                )]
                .into(),
            };
        }
        inner
    }

    #[test]
    fn nesting_past_prosts_limit_is_named() {
        let mut bytes = Vec::new();
        // `Struct` wraps a map entry wrapping a `Value` wrapping the next `Struct`.
        nested(PROTOBUF_NESTING_LIMIT).encode(&mut bytes).unwrap();
        let err = Struct::decode(bytes.as_slice()).expect_err("too deep");
        let malformed = Malformed::of(&err);
        assert_eq!(malformed, Malformed::NestedTooDeeply);
        assert_eq!(
            status(malformed).message(),
            "request: nested too deeply (protobuf messages nest at most 100 levels)"
        );
    }

    #[test]
    fn invalid_utf8_names_the_field() {
        let mut bytes = CheckRequest {
            subject: Some(Subject {
                id: "alice".into(),
                ..Subject::default()
            }),
            ..CheckRequest::default()
        }
        .encode_to_vec();
        let at = bytes.windows(5).position(|w| w == b"alice").unwrap();
        bytes[at] = 0xFF;
        let malformed = decode(&bytes);
        assert!(
            matches!(&malformed, Malformed::InvalidUtf8 { field } if field == "subject.id"),
            "{malformed:?}"
        );
        let status = status(malformed);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "request: invalid UTF-8 in a string field (at subject.id)"
        );
    }

    #[test]
    fn other_errors_are_invalid_protobuf_with_prosts_reason() {
        // Field 2 (subject), length-delimited, claiming 10 bytes that are not there.
        assert_eq!(
            decode(&[0x12, 0x0A, 0x01]).to_string(),
            "request: invalid protobuf: buffer underflow (at subject)"
        );
        // Wire type 7 does not exist.
        assert_eq!(
            decode(&[0x0F]).to_string(),
            "request: invalid protobuf: invalid wire type value: 7"
        );
        // Field number 0.
        assert_eq!(
            decode(&[0x00]).to_string(),
            "request: invalid protobuf: invalid tag value: 0"
        );
    }
}
