//! The HTTP listener over real HTTP: OPA-style `/health` and graceful shutdown.

use super::support::{ECHO_POLICY, Server, http_request};

#[tokio::test]
async fn health_is_500_until_policies_load_then_200() {
    let mut server = Server::bound(&[("p.rego", ECHO_POLICY)], |_| {}).await;
    let before = server.http_get("/health").await;
    assert_eq!(before.status, 500, "{before:?}");
    assert!(
        before.json()["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{before:?}"
    );
    assert!(
        before.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );

    server.app.as_mut().unwrap().load_policies().await.unwrap();
    let after = server.http_get("/health").await;
    assert_eq!(after.status, 200, "{after:?}");
    assert_eq!(after.json(), serde_json::json!({}));

    let missing = server.http_get("/nope").await;
    assert_eq!(missing.status, 404);

    let addr = server.http.unwrap();
    server.stop().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn a_rejected_initial_set_keeps_health_500() {
    let mut server =
        Server::bound(&[("p.rego", "package stepgate\ndecision := {\n")], |_| {}).await;
    assert!(server.app.as_mut().unwrap().load_policies().await.is_err());
    let reply = http_request(server.http.unwrap(), "GET", "/health", &[], "").await;
    assert_eq!(reply.status, 500);
    server.stop().await;
}

#[tokio::test]
async fn an_empty_address_turns_the_http_listener_off() {
    let server = Server::start_with(&[("p.rego", ECHO_POLICY)], |c| c.http_addr = None).await;
    assert_eq!(server.http, None);
    assert_eq!(server.app.as_ref().unwrap().http_addr(), None);
    server.stop().await;
}
