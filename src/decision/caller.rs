//! Who sent a call, as the transport proved it. Never taken from a request body.

use std::sync::Arc;

use crate::identity;

/// How the caller reached stepgate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Plain TCP: the caller is anonymous.
    Tcp,
    /// A Unix domain socket: the caller is the peer's uid.
    Uds,
    /// TLS with a verified client certificate.
    Mtls,
    /// TLS without a client certificate: the caller is anonymous.
    Tls,
}

impl Transport {
    /// The name policies see in `input.caller.via`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Uds => "uds",
            Self::Mtls => "mtls",
            Self::Tls => "tls",
        }
    }
}

/// The authenticated peer of a call (`input.caller`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// `anonymous`, `uds:uid=<uid>`, or the mTLS SPIFFE ID (else CN).
    pub id: Arc<str>,
    /// Whether the transport proved the identity.
    pub authenticated: bool,
    /// The transport.
    pub via: Transport,
}

impl Caller {
    /// A caller on plain TCP.
    pub fn anonymous() -> Self {
        Self {
            id: "anonymous".into(),
            authenticated: false,
            via: Transport::Tcp,
        }
    }

    /// A caller on a Unix socket, identified by its peer credentials; `None` when the
    /// platform did not give any, which leaves the caller anonymous.
    pub fn unix_peer(uid: Option<u32>) -> Self {
        match uid {
            Some(uid) => Self {
                id: format!("uds:uid={uid}").into(),
                authenticated: true,
                via: Transport::Uds,
            },
            None => Self {
                id: "anonymous".into(),
                authenticated: false,
                via: Transport::Uds,
            },
        }
    }

    /// A caller on TLS: the identity of its verified client certificate, or anonymous
    /// when it presented none. A certificate whose identity [`identity::accept`]
    /// refuses (whitespace at an end, a control, format or invisible character) or
    /// that is not already in canonical (NFKC) form is never trusted: the caller is
    /// anonymous on TLS, unauthenticated, and the refusal is logged. Normalising it
    /// instead would let a certificate issued for `ａdmin` act as `admin` (an
    /// allow-list entry), making a lookalike looser, never stricter.
    pub fn tls_peer(identity: Option<String>) -> Self {
        let accepted = identity.filter(|id| {
            let problem = match identity::accept(id) {
                Ok(std::borrow::Cow::Borrowed(_)) => return true,
                Ok(std::borrow::Cow::Owned(_)) => "not in NFKC form".to_string(),
                Err(problem) => problem.to_string(),
            };
            tracing::warn!(identity = ?id, %problem, "client certificate identity refused: the caller is anonymous");
            false
        });
        match accepted {
            Some(id) => Self {
                id: id.into(),
                authenticated: true,
                via: Transport::Mtls,
            },
            None => Self {
                id: "anonymous".into(),
                authenticated: false,
                via: Transport::Tls,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_identity_is_trusted_only_when_accepted_and_canonical() {
        let caller = Caller::tls_peer(Some("spiffe://prod/ns/itsm/sa/jira".into()));
        assert_eq!(
            (&*caller.id, caller.authenticated, caller.via),
            ("spiffe://prod/ns/itsm/sa/jira", true, Transport::Mtls)
        );
        for bad in [
            "ｊira",
            "jira ",
            "ji\u{200B}ra",
            "\u{202E}arij",
            "jira\n",
            "ji\u{7F}ra",
        ] {
            let caller = Caller::tls_peer(Some(bad.into()));
            assert_eq!(
                (&*caller.id, caller.authenticated, caller.via),
                ("anonymous", false, Transport::Tls),
                "{bad:?}"
            );
        }
    }
}
