//! What a grant was requested for (subject, action, resource, scope, workflow), kept
//! compact: [`CompactTerms`] holds them prost-encoded, the subject and the resource as
//! bytes shared with every other grant naming the same one (see [`super::intern`]),
//! the rest in one buffer of the grant's own.
//!
//! Held as protobuf messages, these terms cost a grant kilobytes: a dozen small strings
//! and a B-tree node per attribute map, for values that many grants repeat. Encoded,
//! they cost their wire size, and a thousand grants of one workload share one subject.
//! They are decoded when they are needed whole: for a policy input, a proto reply or
//! a journal record ([`CompactTerms::decode`]). The ids the store indexes by are read
//! from the encoded bytes without decoding ([`CompactTerms::subject_id`],
//! [`CompactTerms::workflow_id`]).

use std::sync::Arc;

use prost::{
    Message,
    encoding::{WireType, decode_key, decode_varint},
};

use super::intern::PARTIES;
use crate::proto::v1;

/// The decoded terms of a grant. See [`CompactTerms`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Terms {
    /// Who the access is for.
    pub subject: v1::Subject,
    /// The action granted.
    pub action: String,
    /// The resource granted.
    pub resource: Option<v1::Resource>,
    /// Scope narrowing.
    pub scope: Vec<String>,
    /// The workflow (ticket) it belongs to.
    pub workflow: Option<v1::Workflow>,
}

/// The grant's own part of its terms, as encoded in [`CompactTerms`].
#[derive(Clone, PartialEq, prost::Message)]
struct OwnTerms {
    #[prost(string, tag = "1")]
    action: String,
    #[prost(string, repeated, tag = "2")]
    scope: Vec<String>,
    #[prost(message, optional, tag = "3")]
    workflow: Option<v1::Workflow>,
}

/// [`OwnTerms`] with its workflow left encoded (the same bytes on the wire).
#[derive(Clone, PartialEq, prost::Message)]
struct OwnTermsEncoded {
    #[prost(string, tag = "1")]
    action: String,
    #[prost(string, repeated, tag = "2")]
    scope: Vec<String>,
    #[prost(bytes = "vec", optional, tag = "3")]
    workflow: Option<Vec<u8>>,
}

/// Field numbers read without decoding: `Subject.id`, `OwnTerms.workflow`, `Workflow.id`.
const SUBJECT_ID: u32 = 1;
const OWN_WORKFLOW: u32 = 3;
const WORKFLOW_ID: u32 = 1;

/// [`Terms`], encoded: the subject and the resource shared (interned), the action, scope
/// and workflow in one exact-size buffer.
#[derive(Clone, PartialEq, Eq)]
pub struct CompactTerms {
    subject: Arc<[u8]>,
    resource: Option<Arc<[u8]>>,
    own: Box<[u8]>,
}

impl std::fmt::Debug for CompactTerms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.decode().fmt(f)
    }
}

impl From<Terms> for CompactTerms {
    fn from(terms: Terms) -> Self {
        let own = OwnTerms {
            action: terms.action,
            scope: terms.scope,
            workflow: terms.workflow,
        };
        Self {
            subject: PARTIES.intern(&terms.subject.encode_to_vec()),
            resource: terms
                .resource
                .map(|resource| PARTIES.intern(&resource.encode_to_vec())),
            own: own.encode_to_vec().into_boxed_slice(),
        }
    }
}

impl CompactTerms {
    /// The terms, decoded (allocates; see the module doc for when that happens).
    pub fn decode(&self) -> Terms {
        let own = decode_or_default::<OwnTerms>(&self.own);
        Terms {
            subject: self.subject(),
            action: own.action,
            resource: self.resource(),
            scope: own.scope,
            workflow: own.workflow,
        }
    }

    /// The subject, decoded.
    pub fn subject(&self) -> v1::Subject {
        decode_or_default(&self.subject)
    }

    /// The resource, decoded.
    pub fn resource(&self) -> Option<v1::Resource> {
        self.resource.as_deref().map(decode_or_default)
    }

    /// The subject's id, read from its encoding.
    pub fn subject_id(&self) -> &str {
        string_field(&self.subject, SUBJECT_ID).unwrap_or_default()
    }

    /// The workflow's id, read from its encoding; `None` without a workflow or with an
    /// empty id.
    pub fn workflow_id(&self) -> Option<&str> {
        field(&self.own, OWN_WORKFLOW)
            .and_then(|workflow| string_field(workflow, WORKFLOW_ID))
            .filter(|id| !id.is_empty())
    }

    /// The encoded subject (shared with the other grants naming it).
    pub fn subject_bytes(&self) -> &Arc<[u8]> {
        &self.subject
    }

    /// The encoded resource (shared with the other grants naming it).
    pub fn resource_bytes(&self) -> Option<&Arc<[u8]>> {
        self.resource.as_ref()
    }

    /// The encoded action, scope and workflow (the grant's own part).
    pub fn own_bytes(&self) -> &[u8] {
        &self.own
    }

    /// Terms from their encodings, as [`Self::subject_bytes`], [`Self::resource_bytes`]
    /// and [`Self::own_bytes`] give them (the journal's form); the subject and the
    /// resource are shared again. `None` when one of them does not decode.
    pub fn from_encoded(subject: &[u8], resource: Option<&[u8]>, own: &[u8]) -> Option<Self> {
        v1::Subject::decode(subject).ok()?;
        if let Some(resource) = resource {
            v1::Resource::decode(resource).ok()?;
        }
        OwnTerms::decode(own).ok()?;
        Some(Self {
            subject: PARTIES.intern(subject),
            resource: resource.map(|resource| PARTIES.intern(resource)),
            own: own.into(),
        })
    }

    /// The encoding of the grant's own part from an action, a scope and an encoded
    /// workflow (how an older journal kept them: side by side in the grant).
    pub fn encode_own(action: String, scope: Vec<String>, workflow: Option<Vec<u8>>) -> Vec<u8> {
        OwnTermsEncoded {
            action,
            scope,
            workflow,
        }
        .encode_to_vec()
    }

    /// Heap bytes this grant holds on its own (the shared subject and resource left
    /// out); for diagnostics.
    pub fn own_len(&self) -> usize {
        self.own.len()
    }
}

/// Decodes bytes this module encoded. They cannot fail to decode (they are never read
/// from outside the process); were they to, the terms would come out empty, which
/// policies see as missing fields (and deny), never as a panic.
fn decode_or_default<M: Message + Default>(bytes: &[u8]) -> M {
    M::decode(bytes).unwrap_or_default()
}

/// The first length-delimited field `tag` of an encoded message; `None` when it is
/// absent or the bytes are malformed.
fn field(mut bytes: &[u8], tag: u32) -> Option<&[u8]> {
    while !bytes.is_empty() {
        let (found, wire_type) = decode_key(&mut bytes).ok()?;
        let skip = match wire_type {
            WireType::Varint => {
                decode_varint(&mut bytes).ok()?;
                0
            }
            WireType::SixtyFourBit => 8,
            WireType::ThirtyTwoBit => 4,
            WireType::LengthDelimited => {
                let len = usize::try_from(decode_varint(&mut bytes).ok()?).ok()?;
                if found == tag {
                    return bytes.get(..len);
                }
                len
            }
            WireType::StartGroup | WireType::EndGroup => return None,
        };
        bytes = bytes.get(skip..)?;
    }
    None
}

fn string_field(bytes: &[u8], tag: u32) -> Option<&str> {
    field(bytes, tag).and_then(|s| std::str::from_utf8(s).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strukt(pairs: &[(&str, &str)]) -> Option<prost_types::Struct> {
        Some(prost_types::Struct {
            fields: pairs
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        prost_types::Value {
                            kind: Some(prost_types::value::Kind::StringValue(v.to_string())),
                        },
                    )
                })
                .collect(),
        })
    }

    fn terms(subject: &str, workflow: Option<&str>) -> Terms {
        Terms {
            subject: v1::Subject {
                id: subject.into(),
                kind: "service_account".into(),
                owner: "team-payments".into(),
                attributes: strukt(&[("environment", "prod")]),
            },
            action: "issue_credential".into(),
            resource: Some(v1::Resource {
                r#type: "secret".into(),
                id: "prod/db/password".into(),
                attributes: strukt(&[("sensitivity", "high")]),
            }),
            scope: vec!["read".into(), "write".into()],
            workflow: workflow.map(|id| v1::Workflow {
                id: id.into(),
                requester: "alice".into(),
                justification: "deploy".into(),
                emergency: true,
                attributes: strukt(&[("ticket_system", "jira")]),
            }),
        }
    }

    #[test]
    fn round_trip_and_ids_without_decoding() {
        for t in [
            terms("spiffe://prod/sa/deployer", Some("CHG-1")),
            terms("s", None),
            terms("", Some("")),
            Terms::default(),
        ] {
            let compact = CompactTerms::from(t.clone());
            assert_eq!(compact.decode(), t);
            assert_eq!(compact.subject_id(), t.subject.id);
            assert_eq!(
                compact.workflow_id(),
                t.workflow
                    .as_ref()
                    .map(|w| w.id.as_str())
                    .filter(|id| !id.is_empty())
            );
        }
    }

    #[test]
    fn equal_parties_are_shared() {
        let a = CompactTerms::from(terms("spiffe://shared", Some("CHG-1")));
        let b = CompactTerms::from(terms("spiffe://shared", Some("CHG-2")));
        assert!(Arc::ptr_eq(a.subject_bytes(), b.subject_bytes()));
        assert!(Arc::ptr_eq(
            a.resource_bytes().unwrap(),
            b.resource_bytes().unwrap()
        ));
        assert_ne!(a, b, "the workflow is each grant's own");
        let c = CompactTerms::from(terms("spiffe://other", Some("CHG-1")));
        assert!(!Arc::ptr_eq(a.subject_bytes(), c.subject_bytes()));
    }

    #[test]
    fn field_reader_skips_other_wire_types_and_refuses_malformed_bytes() {
        // Workflow { emergency: true (varint, tag 4), id: "x" (tag 1) }: out of order.
        let bytes = [0x20, 0x01, 0x0a, 0x01, b'x'];
        assert_eq!(string_field(&bytes, 1), Some("x"));
        // 64-bit and 32-bit fields before it.
        let bytes = [0x09, 0, 0, 0, 0, 0, 0, 0, 0, 0x15, 0, 0, 0, 0, 0x0a, 0x00];
        assert_eq!(string_field(&bytes, 1), Some(""));
        assert_eq!(string_field(&[0x0a, 0x05, b'a'], 1), None, "truncated");
        assert_eq!(string_field(&[0x0a, 0x01, 0xff], 1), None, "not UTF-8");
        assert_eq!(string_field(&[0x0b], 1), None, "a group");
        assert_eq!(string_field(&[0x09, 0], 1), None, "truncated fixed64");
        assert_eq!(string_field(&[], 1), None);
    }
}
