//! The Docker token dance and the 401/403 messages, against a scripted in-process registry
//! (plain HTTP, reached through an insecure-registry entry so the HTTPS→HTTP fallback is
//! exercised too): Bearer challenge → token with Basic credentials → retry; rejected
//! credentials name the secret; a token without the scope says so; anonymous tokens.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use berth_client::creds::AuthEntry;
use berth_client::{ClientError, ClientOptions, ImageRef, Keyring, RegistryClient, TrustOptions};
use berth_proto::Reference;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const MANIFEST: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;

/// Requests seen: (method+path, authorization header).
type Log = Arc<Mutex<Vec<(String, String)>>>;

async fn fake_registry() -> (String, Log) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let log: Log = Arc::default();
    let (a, l) = (addr.clone(), log.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                break;
            };
            let (addr, log) = (a.clone(), l.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    if buf.len() > 65536 || !buf.starts_with(b"GET") && !buf.starts_with(b"HEAD") {
                        return; // a TLS ClientHello or garbage: hang up
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_string();
                let mut lines = head.lines();
                let req = lines.next().unwrap_or("").to_string();
                let path = req.split(' ').nth(1).unwrap_or("").to_string();
                let auth = lines
                    .find_map(|l| {
                        l.strip_prefix("authorization: ")
                            .or_else(|| l.strip_prefix("Authorization: "))
                    })
                    .unwrap_or("")
                    .to_string();
                log.lock().unwrap().push((req.clone(), auth.clone()));
                let b64 = base64::engine::general_purpose::STANDARD;
                let good = format!("Basic {}", b64.encode("alice:right"));
                let (status, headers, body): (&str, String, String) = if path.starts_with("/token")
                {
                    if auth == good {
                        (
                            "200 OK",
                            String::new(),
                            r#"{"token":"alice-token","expires_in":300}"#.into(),
                        )
                    } else if auth.is_empty() {
                        (
                            "200 OK",
                            String::new(),
                            r#"{"access_token":"anon-token"}"#.into(),
                        )
                    } else {
                        (
                            "401 Unauthorized",
                            String::new(),
                            r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#.into(),
                        )
                    }
                } else if path.starts_with("/v2/") {
                    let repo = path
                        .trim_start_matches("/v2/")
                        .split("/manifests/")
                        .next()
                        .unwrap_or("")
                        .to_string();
                    let challenge = format!(
                        "WWW-Authenticate: Bearer realm=\"http://{addr}/token\",service=\"fake\",scope=\"repository:{repo}:pull\"\r\n"
                    );
                    match auth.as_str() {
                        "Bearer alice-token" if repo == "team/denied" => (
                            "403 Forbidden",
                            String::new(),
                            r#"{"errors":[{"code":"DENIED"}]}"#.into(),
                        ),
                        "Bearer alice-token" => (
                            "200 OK",
                            "Content-Type: application/vnd.oci.image.manifest.v1+json\r\n".into(),
                            MANIFEST.into(),
                        ),
                        "Bearer anon-token" if repo == "public/app" => (
                            "200 OK",
                            "Content-Type: application/vnd.oci.image.manifest.v1+json\r\n".into(),
                            MANIFEST.into(),
                        ),
                        _ => (
                            "401 Unauthorized",
                            challenge,
                            r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#.into(),
                        ),
                    }
                } else {
                    ("404 Not Found", String::new(), String::new())
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    (addr, log)
}

fn client(addr: &str, password: Option<&str>) -> RegistryClient {
    let mut trust = TrustOptions::isolated();
    trust.add_insecure(addr).unwrap();
    let mut keyring = Keyring::new();
    if let Some(pw) = password {
        keyring.add_auths(
            BTreeMap::from([(addr.to_string(), AuthEntry::basic("alice", pw))]),
            "pull secret apps/regcred",
        );
    }
    RegistryClient::new(ClientOptions {
        trust,
        keyring,
        ..ClientOptions::default()
    })
}

#[tokio::test]
async fn token_dance_and_auth_messages() {
    let (addr, log) = fake_registry().await;
    let image = |repo: &str| ImageRef::parse(&format!("{addr}/{repo}:v1")).unwrap();
    let tag = Reference::Tag("v1".into());

    // Good credentials: challenge, token with Basic, retry with the Bearer token.
    let c = client(&addr, Some("right"));
    let m = c.get_manifest(&image("team/app"), &tag).await.unwrap();
    assert_eq!(m.bytes.as_ref(), MANIFEST.as_bytes());
    let seen = log.lock().unwrap().clone();
    assert!(
        seen.iter().any(|(r, a)| r
            .starts_with("GET /token?service=fake&scope=repository%3Ateam%2Fapp%3Apull")
            && a.starts_with("Basic ")),
        "{seen:?}"
    );
    // The cached token is reused: the second GET goes straight through.
    let before = log.lock().unwrap().len();
    c.get_manifest(&image("team/app"), &tag).await.unwrap();
    assert_eq!(log.lock().unwrap().len(), before + 1);

    // The token does not grant the scope: 403 says so and names the secret.
    let e = c
        .get_manifest(&image("team/denied"), &tag)
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Auth { status: 403, .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("do not grant the scope repository:team/denied:pull"),
        "{msg}"
    );
    assert!(msg.contains("pull secret apps/regcred"), "{msg}");

    // Wrong password: rejected, naming the user and the secret.
    let e = client(&addr, Some("wrong"))
        .get_manifest(&image("team/app"), &tag)
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("rejected the credentials"), "{msg}");
    assert!(
        msg.contains("user \"alice\" from pull secret apps/regcred"),
        "{msg}"
    );

    // No credentials: an anonymous token works for a public repository...
    let anon = client(&addr, None);
    anon.get_manifest(&image("public/app"), &tag).await.unwrap();
    // ...and for a private one the message says none were found.
    let e = anon
        .get_manifest(&image("team/app"), &tag)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("none were found"), "{e}");
}
