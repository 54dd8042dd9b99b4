//! TLS and mTLS on the gRPC listener with certificates the test generates: who the
//! caller is, who may call what, certificate rotation, and spoofing attempts.

use std::time::Duration;

use stepgate::proto::v1::{
    RevokeRequest, decision_service_client::DecisionServiceClient,
    grant_service_client::GrantServiceClient, revoke_request::Target,
};
use tonic::{Code, Request, transport::Channel};

use super::{
    pki::{Pki, TlsServer, client_config, tls_channel, tls_connect, write_issued},
    support::{ECHO_POLICY, Server, eventually, my_uid, request},
};

const TRUSTED: &str = "spiffe://cluster.local/ns/vault/sa/issuer";
const UNTRUSTED: &str = "spiffe://cluster.local/ns/shop/sa/frontend";

/// `input.caller` as the echo policy reports it: (id, via).
async fn caller_seen(channel: Channel, spoof: bool) -> Result<(String, String), tonic::Status> {
    let mut call = Request::new(request("read"));
    if spoof {
        let metadata = call.metadata_mut();
        metadata.insert("x-spiffe-id", TRUSTED.parse().unwrap());
        metadata.insert(
            "x-forwarded-client-cert",
            format!("By=spiffe://x;URI={TRUSTED}").parse().unwrap(),
        );
        metadata.insert("authorization", "Bearer admin".parse().unwrap());
    }
    let decision = DecisionServiceClient::new(channel)
        .check(call)
        .await?
        .into_inner()
        .decision
        .unwrap();
    Ok((decision.reasons[0].clone(), decision.reasons[1].clone()))
}

async fn revoke(channel: Channel) -> Result<(), tonic::Status> {
    GrantServiceClient::new(channel)
        .revoke(RevokeRequest {
            target: Some(Target::WorkflowId("CHG-0".into())),
            reason: "test".into(),
            revoked_by: "tester".into(),
        })
        .await
        .map(|_| ())
}

#[tokio::test]
async fn required_client_certificates_name_the_caller_and_gate_admin_rpcs() {
    let TlsServer {
        pki,
        server,
        dir: _dir,
        ..
    } = TlsServer::start(&[("p.rego", ECHO_POLICY)], true, |config| {
        config.admin_callers = Some(vec![TRUSTED.to_string()]);
    })
    .await;
    let h2: &[&[u8]] = &[b"h2"];

    // No client certificate: refused by the handshake, before any RPC.
    let anonymous = pki.client_config(None, h2);
    let refused = match tls_channel(server.addr, anonymous).await {
        Err(_) => true,
        Ok(channel) => caller_seen(channel, false).await.is_err(),
    };
    assert!(refused, "a client without a certificate was served");

    // A client certificate from another CA is refused too.
    let stranger = Pki::new("other-ca");
    let forged = stranger.client("forged", Some(TRUSTED));
    // Trusts the server's CA but presents a certificate the server cannot verify.
    let config = client_config(&pki, Some(&forged), h2);
    let refused = match tls_channel(server.addr, config).await {
        Err(_) => true,
        Ok(channel) => caller_seen(channel, false).await.is_err(),
    };
    assert!(refused, "a certificate from an unknown CA was accepted");

    // The SPIFFE URI SAN is the caller, whatever the metadata claims.
    let trusted = pki.client("issuer", Some(TRUSTED));
    let trusted = tls_channel(server.addr, pki.client_config(Some(&trusted), h2))
        .await
        .unwrap();
    let untrusted = pki.client("frontend", Some(UNTRUSTED));
    let untrusted = tls_channel(server.addr, pki.client_config(Some(&untrusted), h2))
        .await
        .unwrap();
    assert_eq!(
        caller_seen(trusted.clone(), false).await.unwrap(),
        (TRUSTED.to_string(), "mtls".to_string())
    );
    assert_eq!(
        caller_seen(untrusted.clone(), true).await.unwrap(),
        (UNTRUSTED.to_string(), "mtls".to_string()),
        "metadata changed input.caller"
    );

    // Without a SPIFFE ID, the CN names the caller.
    let batch = pki.client("billing-batch", None);
    let batch = tls_channel(server.addr, pki.client_config(Some(&batch), h2))
        .await
        .unwrap();
    assert_eq!(caller_seen(batch, false).await.unwrap().0, "billing-batch");

    // Admin RPCs: the untrusted identity is refused, even when it claims to be trusted.
    let mut spoofed = Request::new(RevokeRequest {
        target: Some(Target::WorkflowId("CHG-0".into())),
        reason: "test".into(),
        revoked_by: "tester".into(),
    });
    spoofed
        .metadata_mut()
        .insert("x-spiffe-id", TRUSTED.parse().unwrap());
    let err = GrantServiceClient::new(untrusted.clone())
        .revoke(spoofed)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains(UNTRUSTED), "{}", err.message());
    revoke(trusted)
        .await
        .expect("the trusted caller may revoke");
    server.stop().await;
}

#[tokio::test]
async fn optional_client_certificates_leave_anonymous_tls_callers() {
    let TlsServer {
        pki,
        server,
        dir: _dir,
        ..
    } = TlsServer::start(&[("p.rego", ECHO_POLICY)], false, |_| {}).await;
    let h2: &[&[u8]] = &[b"h2"];
    let channel = tls_channel(server.addr, pki.client_config(None, h2))
        .await
        .unwrap();
    assert_eq!(
        caller_seen(channel, true).await.unwrap(),
        ("anonymous".to_string(), "tls".to_string())
    );
    let issuer = pki.client("issuer", Some(TRUSTED));
    let channel = tls_channel(server.addr, pki.client_config(Some(&issuer), h2))
        .await
        .unwrap();
    assert_eq!(caller_seen(channel, false).await.unwrap().0, TRUSTED);
    server.stop().await;
}

#[tokio::test]
async fn a_certificate_with_a_malformed_or_lookalike_identity_is_an_anonymous_caller() {
    let TlsServer {
        pki,
        server,
        dir: _dir,
        ..
    } = TlsServer::start(&[("p.rego", ECHO_POLICY)], true, |config| {
        config.admin_callers = Some(vec!["issuer".to_string()]);
    })
    .await;
    let h2: &[&[u8]] = &[b"h2"];
    // Verified by the CA, but the identity is refused (or would only pass as `issuer`
    // once normalised): never trusted, never on the admin list.
    for cn in [
        "issuer\u{200B}",
        "issuer ",
        "\u{202E}reussi",
        "ｉssuer",
        "iss\u{00AD}uer",
    ] {
        let issued = pki.client(cn, None);
        let channel = tls_channel(server.addr, pki.client_config(Some(&issued), h2))
            .await
            .unwrap();
        assert_eq!(
            caller_seen(channel.clone(), false).await.unwrap(),
            ("anonymous".to_string(), "tls".to_string()),
            "{cn:?}"
        );
        let err = revoke(channel).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{cn:?}");
    }
    let issuer = pki.client("issuer", None);
    let channel = tls_channel(server.addr, pki.client_config(Some(&issuer), h2))
        .await
        .unwrap();
    assert_eq!(
        caller_seen(channel.clone(), false).await.unwrap().0,
        "issuer"
    );
    revoke(channel).await.expect("the admin may revoke");
    server.stop().await;
}

#[tokio::test]
async fn the_server_certificate_is_reloaded_when_its_files_change() {
    let TlsServer {
        pki,
        server,
        tls,
        dir: _dir,
    } = TlsServer::start(&[("p.rego", ECHO_POLICY)], false, |_| {}).await;
    let (cert_path, key_path) = (tls.cert.clone(), tls.key.clone());
    let config = pki.client_config(None, &[b"h2"]);
    let served_cert = async || {
        let stream = tls_connect(server.addr, config.clone()).await.unwrap();
        stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
    };
    let before = served_cert().await;

    let rotated = pki.server("stepgate-rotated");
    write_issued(&rotated, &cert_path, &key_path);
    let expected = {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        CertificateDer::from_pem_slice(rotated.cert_pem.as_bytes())
            .unwrap()
            .to_vec()
    };
    assert_ne!(before, expected);
    assert!(
        eventually(Duration::from_secs(10), async || served_cert().await
            == expected)
        .await,
        "the rotated certificate was never served"
    );
    // Calls keep working on the rotated certificate.
    let channel = tls_channel(server.addr, config.clone()).await.unwrap();
    assert!(caller_seen(channel, false).await.is_ok());
    server.stop().await;
}

#[tokio::test]
async fn per_service_allow_lists_and_the_unix_socket_mode() {
    let me = format!("uds:uid={}", my_uid());
    let server = Server::start_with(&[("p.rego", ECHO_POLICY)], |config| {
        config.service_callers.decision = Some(vec![me.clone()]);
        config.service_callers.grant = Some(vec!["spiffe://nobody".into()]);
        config.grpc_uds_mode = Some(0o660);
    })
    .await;
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&server.uds).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o660);

    // On the Unix socket the caller is the peer uid, whatever the metadata says.
    let (id, via) = caller_seen(server.uds_channel().await, true).await.unwrap();
    assert_eq!((id.as_str(), via.as_str()), (me.as_str(), "uds"));
    // Plain TCP is anonymous: not on the DecisionService list.
    let err = caller_seen(server.tcp_channel().await, true)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("stepgate.v1.DecisionService"),
        "{}",
        err.message()
    );
    // GrantService lists someone else: even its non-admin RPCs are refused.
    let err = revoke(server.uds_channel().await).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    server.stop().await;
}
