//! The admin API (`/api/v1/`) against the real `berth serve` over TLS: every endpoint,
//! every role's allowed and denied management actions, the last-administrator rule, robot
//! accounts end to end (secret shown once, Basic on /v2/, the token endpoint, revocation),
//! and the audit log.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::{ADMIN_PASSWORD, ADMIN_USER, Berth, basic_auth};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

/// A running server and a credential-less client for it.
struct Api {
    berth: Berth,
    http: reqwest::Client,
}

/// One answer: status, headers and the JSON body (`Null` when empty).
struct Resp {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Resp {
    #[track_caller]
    fn expect(&self, status: u16) -> &Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status; body: {}",
            self.body
        );
        &self.body
    }

    /// An error answer in the registry's envelope with this status and code.
    #[track_caller]
    fn expect_error(&self, status: u16, code: &str) {
        self.expect(status);
        assert_eq!(self.body["errors"][0]["code"], code, "{}", self.body);
        assert!(
            self.body["errors"][0]["message"]
                .as_str()
                .is_some_and(|d| !d.is_empty()),
            "{}",
            self.body
        );
    }
}

/// Credentials for a request.
#[derive(Clone, Copy)]
enum As<'a> {
    Nobody,
    Basic(&'a str, &'a str),
    Bearer(&'a str),
}

const ADMIN: As<'static> = As::Basic(ADMIN_USER, ADMIN_PASSWORD);
const PW: &str = "password-0123";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

impl Api {
    fn start() -> Api {
        let berth = Berth::start();
        let http = berth.anon_client();
        Api { berth, http }
    }

    fn request(&self, method: Method, path: &str, who: As) -> reqwest::RequestBuilder {
        let r = self
            .http
            .request(method, format!("{}{path}", self.berth.url()));
        match who {
            As::Nobody => r,
            As::Basic(u, p) => r.header("authorization", basic_auth(u, p)),
            As::Bearer(t) => r.header("authorization", format!("Bearer {t}")),
        }
    }

    async fn send(&self, r: reqwest::RequestBuilder) -> Resp {
        let resp = r.send().await.expect("request");
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.expect("body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Resp {
            status,
            headers,
            body,
        }
    }

    async fn call(&self, method: Method, path: &str, who: As<'_>, body: Option<Value>) -> Resp {
        let mut r = self.request(method, path, who);
        if let Some(b) = body {
            r = r.json(&b);
        }
        self.send(r).await
    }

    async fn get(&self, path: &str, who: As<'_>) -> Resp {
        self.call(Method::GET, path, who, None).await
    }

    async fn post(&self, path: &str, who: As<'_>, body: Value) -> Resp {
        self.call(Method::POST, path, who, Some(body)).await
    }

    async fn put(&self, path: &str, who: As<'_>, body: Value) -> Resp {
        self.call(Method::PUT, path, who, Some(body)).await
    }

    async fn patch(&self, path: &str, who: As<'_>, body: Value) -> Resp {
        self.call(Method::PATCH, path, who, Some(body)).await
    }

    async fn delete(&self, path: &str, who: As<'_>) -> Resp {
        self.call(Method::DELETE, path, who, None).await
    }

    async fn add_user(&self, name: &str) {
        self.post(
            "/api/v1/users",
            ADMIN,
            json!({"name": name, "password": PW}),
        )
        .await
        .expect(201);
    }

    async fn create_project(&self, name: &str, public: bool) {
        self.post(
            "/api/v1/projects",
            ADMIN,
            json!({"name": name, "public": public}),
        )
        .await
        .expect(201);
    }

    async fn member(&self, project: &str, user: &str, role: &str) {
        self.put(
            &format!("/api/v1/projects/{project}/members/{user}"),
            ADMIN,
            json!({"role": role}),
        )
        .await
        .expect(200);
    }

    /// Push a one-blob image to `repo:tag`; the status of the manifest PUT.
    async fn push(&self, repo: &str, tag: &str, who: As<'_>) -> StatusCode {
        let config = format!("{{\"repo\":\"{repo}\",\"tag\":\"{tag}\"}}").into_bytes();
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&config)));
        let r = self
            .send(
                self.request(
                    Method::POST,
                    &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
                    who,
                )
                .header("content-type", "application/octet-stream")
                .body(config.clone()),
            )
            .await;
        if r.status != StatusCode::CREATED {
            return r.status;
        }
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest, "size": config.len()},
            "layers": [],
        });
        self.send(
            self.request(Method::PUT, &format!("/v2/{repo}/manifests/{tag}"), who)
                .header("content-type", "application/vnd.oci.image.manifest.v1+json")
                .body(serde_json::to_vec(&manifest).unwrap()),
        )
        .await
        .status
    }

    /// GET a manifest; the status.
    async fn pull(&self, repo: &str, tag: &str, who: As<'_>) -> StatusCode {
        self.send(
            self.request(Method::GET, &format!("/v2/{repo}/manifests/{tag}"), who)
                .header("accept", "application/vnd.oci.image.manifest.v1+json"),
        )
        .await
        .status
    }

    /// A token from `/service/token` for `scope`, with Basic credentials.
    async fn token(&self, who: As<'_>, scope: &str) -> Resp {
        self.get(&format!("/service/token?service=berth&scope={scope}"), who)
            .await
    }

    async fn audit(&self, query: &str) -> Vec<Value> {
        let r = self.get(&format!("/api/v1/audit?{query}"), ADMIN).await;
        r.expect(200).as_array().expect("array").clone()
    }
}

fn names(v: &Value, key: &str) -> Vec<String> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x[key].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn authentication_errors_and_the_document() {
    let api = Api::start();
    // No credentials: 401, a Basic challenge, the JSON envelope.
    let r = api.get("/api/v1/projects", As::Nobody).await;
    r.expect_error(401, "UNAUTHORIZED");
    assert_eq!(r.headers["www-authenticate"], "Basic realm=\"berth\"");
    // Wrong password: 401 with the same challenge.
    let r = api
        .get("/api/v1/me", As::Basic("admin", "wrong-password"))
        .await;
    r.expect_error(401, "UNAUTHORIZED");
    assert_eq!(r.headers["www-authenticate"], "Basic realm=\"berth\"");
    // Garbage Authorization header.
    let r = api
        .send(
            api.request(Method::GET, "/api/v1/me", As::Nobody)
                .header("authorization", "Basic !!!"),
        )
        .await;
    r.expect_error(401, "UNAUTHORIZED");

    // Basic works; so does a bearer token from the token endpoint (its subject counts).
    let me = api.get("/api/v1/me", ADMIN).await;
    assert_eq!(
        *me.expect(200),
        json!({"name": "admin", "kind": "user", "admin": true, "projects": []})
    );
    let t = api.token(ADMIN, "registry:catalog:*").await;
    let token = t.expect(200)["token"].as_str().unwrap().to_string();
    let r = api.get("/api/v1/me", As::Bearer(&token)).await;
    assert_eq!(r.expect(200)["name"], "admin");
    api.get("/api/v1/users", As::Bearer(&token))
        .await
        .expect(200);
    // An anonymous token names nobody: 401.
    let anon = api.token(As::Nobody, "repository:library/x:pull").await;
    let anon = anon.expect(200)["token"].as_str().unwrap().to_string();
    api.get("/api/v1/me", As::Bearer(&anon))
        .await
        .expect_error(401, "UNAUTHORIZED");
    // A forged token: 401.
    api.get("/api/v1/me", As::Bearer("eyJhbGciOiJFUzI1NiJ9.e30.c2ln"))
        .await
        .expect_error(401, "UNAUTHORIZED");

    // Malformed bodies, unknown fields, bad roles and names: 400 in the envelope.
    let r = api
        .send(
            api.request(Method::POST, "/api/v1/projects", ADMIN)
                .header("content-type", "application/json")
                .body("{not json"),
        )
        .await;
    r.expect(400);
    assert!(
        r.body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("JSON")
    );
    api.post(
        "/api/v1/projects",
        ADMIN,
        json!({"name": "x", "colour": "red"}),
    )
    .await
    .expect(400);
    api.post("/api/v1/projects", ADMIN, json!({"name": "Bad/Name"}))
        .await
        .expect_error(400, "NAME_INVALID");
    api.put(
        "/api/v1/projects/library/members/admin",
        ADMIN,
        json!({"role": "owner"}),
    )
    .await
    .expect(400);
    api.get("/api/v1/audit?limit=many", ADMIN).await.expect(400);
    // Unknown endpoints: JSON 404; wrong method: 405.
    api.get("/api/v1/nothing-here", ADMIN)
        .await
        .expect_error(404, "NAME_UNKNOWN");
    assert_eq!(
        api.call(Method::PUT, "/api/v1/users", ADMIN, None)
            .await
            .status,
        StatusCode::METHOD_NOT_ALLOWED
    );

    // The OpenAPI document, without credentials.
    let doc = api.get("/api/v1/openapi.json", As::Nobody).await;
    let doc = doc.expect(200);
    assert_eq!(doc["openapi"], "3.1.0");
    for p in [
        "/api/v1/projects",
        "/api/v1/projects/{name}",
        "/api/v1/projects/{name}/members/{user}",
        "/api/v1/projects/{name}/robots/{robot}",
        "/api/v1/users/{name}",
        "/api/v1/audit",
        "/api/v1/me",
    ] {
        assert!(
            doc["paths"].get(p).is_some(),
            "{p} missing from the document"
        );
    }
}

#[tokio::test]
async fn projects_lifecycle_and_visibility() {
    let api = Api::start();
    api.add_user("alice").await;
    api.add_user("bob").await;
    let alice = As::Basic("alice", PW);
    let bob = As::Basic("bob", PW);

    // The built-in project.
    let lib = api.get("/api/v1/projects/library", bob).await;
    let lib = lib.expect(200);
    assert_eq!(lib["public"], true);
    assert!(lib.get("role").is_none());

    // Any user may create a project and becomes its project admin.
    let r = api
        .post(
            "/api/v1/projects",
            alice,
            json!({"name": "alice-prj", "description": "Alice's"}),
        )
        .await;
    let p = r.expect(201);
    assert_eq!(p["name"], "alice-prj");
    assert_eq!(p["public"], false);
    assert_eq!(p["description"], "Alice's");
    assert_eq!(p["role"], "project_admin");
    assert!((p["created_at"].as_i64().unwrap() - now()).abs() < 60);
    let me = api.get("/api/v1/me", alice).await;
    assert_eq!(
        me.expect(200)["projects"],
        json!([{"project": "alice-prj", "role": "project_admin"}])
    );
    // Duplicate: 409.
    api.post("/api/v1/projects", bob, json!({"name": "alice-prj"}))
        .await
        .expect(409);

    // Listing: public + own for users, everything for admins.
    let all = api.get("/api/v1/projects", ADMIN).await;
    assert_eq!(names(all.expect(200), "name"), ["alice-prj", "library"]);
    let b = api.get("/api/v1/projects", bob).await;
    assert_eq!(names(b.expect(200), "name"), ["library"]);
    let a = api.get("/api/v1/projects", alice).await;
    assert_eq!(names(a.expect(200), "name"), ["alice-prj", "library"]);

    // A private project looks missing to outsiders: the same 404 as a missing one.
    let hidden = api.get("/api/v1/projects/alice-prj", bob).await;
    let missing = api.get("/api/v1/projects/no-such-prj", bob).await;
    hidden.expect_error(404, "NAME_UNKNOWN");
    missing.expect_error(404, "NAME_UNKNOWN");
    for path in [
        "/api/v1/projects/alice-prj",
        "/api/v1/projects/alice-prj/members",
        "/api/v1/projects/alice-prj/robots",
    ] {
        api.get(path, bob).await.expect(404);
    }
    api.patch("/api/v1/projects/alice-prj", bob, json!({"public": true}))
        .await
        .expect(404);
    api.delete("/api/v1/projects/alice-prj", bob)
        .await
        .expect(404);

    // Update by its project admin; a visible project others may not change: 403.
    let r = api
        .patch(
            "/api/v1/projects/alice-prj",
            alice,
            json!({"public": true, "description": "now public"}),
        )
        .await;
    let p = r.expect(200);
    assert_eq!(
        (p["public"].clone(), p["description"].clone()),
        (json!(true), json!("now public"))
    );
    api.get("/api/v1/projects/alice-prj", bob).await.expect(200);
    api.patch("/api/v1/projects/alice-prj", bob, json!({"public": false}))
        .await
        .expect_error(403, "DENIED");
    api.patch(
        "/api/v1/projects/library",
        alice,
        json!({"description": "mine"}),
    )
    .await
    .expect_error(403, "DENIED");
    api.delete("/api/v1/projects/library", bob)
        .await
        .expect_error(403, "DENIED");
    // Only the description.
    let r = api
        .patch(
            "/api/v1/projects/alice-prj",
            ADMIN,
            json!({"description": "d2"}),
        )
        .await;
    assert_eq!(r.expect(200)["public"], true);

    // Delete: refused (409) while a repository exists.
    assert_eq!(
        api.push("alice-prj/app", "v1", alice).await,
        StatusCode::CREATED
    );
    let r = api.delete("/api/v1/projects/alice-prj", alice).await;
    r.expect(409);
    assert!(
        r.body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("alice-prj/app"),
        "{}",
        r.body
    );
    // An empty project goes; deleting again is 404.
    api.create_project("empty", false).await;
    api.delete("/api/v1/projects/empty", ADMIN)
        .await
        .expect(204);
    api.get("/api/v1/projects/empty", ADMIN).await.expect(404);
    api.delete("/api/v1/projects/empty", ADMIN)
        .await
        .expect(404);

    // Robots may not create projects.
    let r = api
        .post(
            "/api/v1/projects/alice-prj/robots",
            alice,
            json!({"name": "ci"}),
        )
        .await;
    let secret = r.expect(201)["secret"].as_str().unwrap().to_string();
    api.post(
        "/api/v1/projects",
        As::Basic("robot$alice-prj+ci", &secret),
        json!({"name": "robots-prj"}),
    )
    .await
    .expect_error(403, "DENIED");
}

/// What each kind of caller may do to a private project's settings, members and robots,
/// and to users and the audit log.
#[tokio::test]
async fn every_role_allowed_and_denied() {
    let api = Api::start();
    api.create_project("prj", false).await;
    for (user, role) in [
        ("guest", Some("guest")),
        ("dev", Some("developer")),
        ("maint", Some("maintainer")),
        ("padmin", Some("project_admin")),
        ("outsider", None),
    ] {
        api.add_user(user).await;
        if let Some(role) = role {
            api.member("prj", user, role).await;
        }
    }
    api.add_user("target").await;
    let r = api
        .post(
            "/api/v1/projects/prj/robots",
            ADMIN,
            json!({"name": "bot", "push": true}),
        )
        .await;
    let robot_secret = r.expect(201)["secret"].as_str().unwrap().to_string();

    // (caller, may see the project, may list members, may manage)
    let robot = As::Basic("robot$prj+bot", &robot_secret);
    let cases: Vec<(&str, As, bool, bool, bool)> = vec![
        ("guest", As::Basic("guest", PW), true, true, false),
        ("developer", As::Basic("dev", PW), true, true, false),
        ("maintainer", As::Basic("maint", PW), true, true, false),
        ("project admin", As::Basic("padmin", PW), true, true, true),
        ("non-member", As::Basic("outsider", PW), false, false, false),
        ("robot", robot, true, true, false),
        ("system admin", ADMIN, true, true, true),
    ];
    for (who, cred, see, list_members, manage) in cases {
        let ctx = |what: &str| format!("{who}: {what}");
        let hidden = if see { 403 } else { 404 };

        let r = api.get("/api/v1/projects/prj", cred).await;
        assert_eq!(
            r.status.as_u16(),
            if see { 200 } else { 404 },
            "{}",
            ctx("get")
        );
        let r = api.get("/api/v1/projects/prj/members", cred).await;
        let want = if list_members { 200 } else { hidden };
        assert_eq!(r.status.as_u16(), want, "{}", ctx("list members"));

        let want = if manage { 200 } else { hidden };
        let r = api
            .put(
                "/api/v1/projects/prj/members/target",
                cred,
                json!({"role": "guest"}),
            )
            .await;
        assert_eq!(r.status.as_u16(), want, "{}", ctx("set member"));
        let r = api
            .delete("/api/v1/projects/prj/members/target", cred)
            .await;
        let want = if manage { 204 } else { hidden };
        assert_eq!(r.status.as_u16(), want, "{}", ctx("remove member"));
        let r = api.get("/api/v1/projects/prj/robots", cred).await;
        let want = if manage { 200 } else { hidden };
        assert_eq!(r.status.as_u16(), want, "{}", ctx("list robots"));
        let robot_name = format!("r-{}", who.replace(' ', "-"));
        let r = api
            .post(
                "/api/v1/projects/prj/robots",
                cred,
                json!({"name": robot_name}),
            )
            .await;
        let want = if manage { 201 } else { hidden };
        assert_eq!(r.status.as_u16(), want, "{}", ctx("create robot"));
        let r = api
            .delete(&format!("/api/v1/projects/prj/robots/{robot_name}"), cred)
            .await;
        let want = if manage { 200 } else { hidden };
        assert_eq!(r.status.as_u16(), want, "{}", ctx("revoke robot"));
        let r = api
            .patch("/api/v1/projects/prj", cred, json!({"description": who}))
            .await;
        let want = if manage { 200 } else { hidden };
        assert_eq!(r.status.as_u16(), want, "{}", ctx("update project"));

        // Users and the audit log: system administrators only.
        let admin_only = |s: StatusCode| {
            if who == "system admin" {
                assert!(s.is_success(), "{}: {s}", ctx("admin-only"));
            } else {
                assert_eq!(s, StatusCode::FORBIDDEN, "{}", ctx("admin-only"));
            }
        };
        admin_only(api.get("/api/v1/users", cred).await.status);
        admin_only(api.get("/api/v1/audit", cred).await.status);
        let new_user = format!("made-by-{}", who.replace(' ', "-"));
        admin_only(
            api.post(
                "/api/v1/users",
                cred,
                json!({"name": new_user, "password": PW}),
            )
            .await
            .status,
        );
        admin_only(
            api.patch("/api/v1/users/target", cred, json!({"admin": false}))
                .await
                .status,
        );
        if who != "system admin" {
            // Nobody but an administrator may change someone else's password or delete.
            api.patch(
                "/api/v1/users/target",
                cred,
                json!({"password": "x-new-password"}),
            )
            .await
            .expect(403);
            api.delete("/api/v1/users/target", cred).await.expect(403);
        }
        // Project deletion needs manage rights (the project holds nothing, so a manager
        // would succeed: only check the refusals here).
        if !manage {
            let r = api.delete("/api/v1/projects/prj", cred).await;
            assert_eq!(r.status.as_u16(), hidden, "{}", ctx("delete project"));
        }
    }

    // A project admin manages only their own project.
    api.create_project("other", false).await;
    api.put(
        "/api/v1/projects/other/members/padmin",
        ADMIN,
        json!({"role": "developer"}),
    )
    .await
    .expect(200);
    api.put(
        "/api/v1/projects/other/members/target",
        As::Basic("padmin", PW),
        json!({"role": "guest"}),
    )
    .await
    .expect_error(403, "DENIED");
    // Members of a missing user: 404; removing a non-member: 404.
    api.put(
        "/api/v1/projects/prj/members/ghost",
        ADMIN,
        json!({"role": "guest"}),
    )
    .await
    .expect(404);
    api.delete("/api/v1/projects/prj/members/ghost", ADMIN)
        .await
        .expect(404);

    // Roles round-trip in the member list (admin and project_admin accepted).
    api.put(
        "/api/v1/projects/prj/members/target",
        ADMIN,
        json!({"role": "admin"}),
    )
    .await
    .expect(200);
    let ms = api.get("/api/v1/projects/prj/members", ADMIN).await;
    let roles: Vec<(String, String)> = ms
        .expect(200)
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["user"].as_str().unwrap().into(),
                m["role"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        roles,
        [
            ("admin".into(), "project_admin".into()),
            ("dev".into(), "developer".into()),
            ("guest".into(), "guest".into()),
            ("maint".into(), "maintainer".into()),
            ("padmin".into(), "project_admin".into()),
            ("target".into(), "project_admin".into()),
        ]
    );

    // The new role counts on /v2/ at once: guest may pull, not push; developer may push.
    assert_eq!(api.push("prj/app", "v1", ADMIN).await, StatusCode::CREATED);
    assert_eq!(
        api.pull("prj/app", "v1", As::Basic("guest", PW)).await,
        StatusCode::OK
    );
    assert_eq!(
        api.push("prj/app", "v2", As::Basic("guest", PW)).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        api.push("prj/app", "v2", As::Basic("dev", PW)).await,
        StatusCode::CREATED
    );
    // Removing a member takes the access away.
    api.delete("/api/v1/projects/prj/members/dev", As::Basic("padmin", PW))
        .await
        .expect(204);
    assert_eq!(
        api.pull("prj/app", "v1", As::Basic("dev", PW)).await,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn users_passwords_and_the_last_admin() {
    let api = Api::start();
    // Add with a password, and without (generated, returned once).
    let r = api
        .post(
            "/api/v1/users",
            ADMIN,
            json!({"name": "alice", "password": PW}),
        )
        .await;
    let u = r.expect(201);
    assert_eq!(u["name"], "alice");
    assert_eq!(u["admin"], false);
    assert!(u.get("password").is_none(), "{u}");
    assert!(u.get("password_hash").is_none());
    let r = api
        .post("/api/v1/users", ADMIN, json!({"name": "gen"}))
        .await;
    let generated = r.expect(201)["password"].as_str().unwrap().to_string();
    assert!(generated.len() >= 32);
    assert_eq!(r.headers["cache-control"], "no-store");
    api.get("/api/v1/me", As::Basic("gen", &generated))
        .await
        .expect(200);
    // Duplicates, bad names, short passwords.
    api.post(
        "/api/v1/users",
        ADMIN,
        json!({"name": "alice", "password": PW}),
    )
    .await
    .expect(409);
    for bad in ["", "a:b", "with space", "robot$x+y", "local-admin"] {
        api.post("/api/v1/users", ADMIN, json!({"name": bad, "password": PW}))
            .await
            .expect(400);
    }
    api.post(
        "/api/v1/users",
        ADMIN,
        json!({"name": "shorty", "password": "short"}),
    )
    .await
    .expect(400);
    let list = api.get("/api/v1/users", ADMIN).await;
    assert_eq!(names(list.expect(200), "name"), ["admin", "alice", "gen"]);
    assert!(!list.body.to_string().contains("argon2"));

    // A user changes their own password; old sessions end (Basic and refresh tokens).
    let refresh = api
        .send(
            api.request(Method::POST, "/service/token", As::Nobody)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!(
                    "grant_type=password&service=berth&username=alice&password={PW}&scope=repository:library/x:pull"
                )),
        )
        .await;
    let refresh = refresh.expect(200)["refresh_token"]
        .as_str()
        .unwrap()
        .to_string();
    let alice = As::Basic("alice", PW);
    let r = api
        .patch(
            "/api/v1/users/alice",
            alice,
            json!({"password": "alice-new-pw"}),
        )
        .await;
    assert_eq!(r.expect(200)["name"], "alice");
    api.get("/api/v1/me", alice).await.expect(401);
    api.get("/api/v1/me", As::Basic("alice", "alice-new-pw"))
        .await
        .expect(200);
    let r = api
        .send(
            api.request(Method::POST, "/service/token", As::Nobody)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!(
                    "grant_type=refresh_token&service=berth&refresh_token={refresh}"
                )),
        )
        .await;
    r.expect(401);
    // …but not anyone else's, nor their own admin flag.
    let alice = As::Basic("alice", "alice-new-pw");
    api.patch(
        "/api/v1/users/gen",
        alice,
        json!({"password": "x-password-1"}),
    )
    .await
    .expect_error(403, "DENIED");
    api.patch("/api/v1/users/alice", alice, json!({"admin": true}))
        .await
        .expect_error(403, "DENIED");
    api.patch("/api/v1/users/alice", alice, json!({"password": "short"}))
        .await
        .expect(400);
    api.patch("/api/v1/users/alice", alice, json!({}))
        .await
        .expect(400);
    // Missing users: 404 for administrators.
    api.patch("/api/v1/users/ghost", ADMIN, json!({"password": PW}))
        .await
        .expect(404);
    api.delete("/api/v1/users/ghost", ADMIN).await.expect(404);

    // The last administrator can be neither demoted nor deleted…
    api.patch("/api/v1/users/admin", ADMIN, json!({"admin": false}))
        .await
        .expect(409);
    let r = api.delete("/api/v1/users/admin", ADMIN).await;
    r.expect(409);
    assert!(
        r.body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("last")
    );
    // …until there is another one. Admin rights apply at once.
    api.get("/api/v1/users", alice).await.expect(403);
    let r = api
        .patch("/api/v1/users/alice", ADMIN, json!({"admin": true}))
        .await;
    assert_eq!(r.expect(200)["admin"], true);
    api.get("/api/v1/users", alice).await.expect(200);
    api.delete("/api/v1/users/admin", alice).await.expect(204);
    api.get("/api/v1/me", ADMIN).await.expect(401);
    // Now alice is the last one.
    api.delete("/api/v1/users/alice", alice).await.expect(409);
    api.patch("/api/v1/users/alice", alice, json!({"admin": false}))
        .await
        .expect(409);
    // Deleting a user removes their memberships.
    api.post("/api/v1/projects", alice, json!({"name": "p"}))
        .await
        .expect(201);
    api.put(
        "/api/v1/projects/p/members/gen",
        alice,
        json!({"role": "developer"}),
    )
    .await
    .expect(200);
    api.delete("/api/v1/users/gen", alice).await.expect(204);
    let ms = api.get("/api/v1/projects/p/members", alice).await;
    assert_eq!(names(ms.expect(200), "user"), ["alice"]);
    api.get("/api/v1/me", As::Basic("gen", &generated))
        .await
        .expect(401);
}

#[tokio::test]
async fn robot_accounts_end_to_end() {
    let api = Api::start();
    api.create_project("ci-prj", false).await;
    api.create_project("secret-prj", false).await;
    assert_eq!(
        api.push("secret-prj/app", "v1", ADMIN).await,
        StatusCode::CREATED
    );

    // Created with push and an expiry; the secret is in this answer only.
    let r = api
        .post(
            "/api/v1/projects/ci-prj/robots",
            ADMIN,
            json!({"name": "builder", "push": true, "expires_in_days": 30, "description": "CI"}),
        )
        .await;
    let created = r.expect(201).clone();
    assert_eq!(r.headers["cache-control"], "no-store");
    let name = created["name"].as_str().unwrap().to_string();
    assert_eq!(name, "robot$ci-prj+builder");
    let secret = created["secret"].as_str().unwrap().to_string();
    assert!(secret.len() >= 32);
    assert_eq!(created["push"], true);
    assert_eq!(created["active"], true);
    let exp = created["expires_at"].as_i64().unwrap();
    assert!((exp - now() - 30 * 86_400).abs() < 120, "{exp}");
    let list = api.get("/api/v1/projects/ci-prj/robots", ADMIN).await;
    let list = list.expect(200);
    assert_eq!(names(list, "name"), [name.as_str()]);
    assert!(!list.to_string().contains(&secret));
    assert!(list[0].get("secret").is_none());
    // Same name again: 409; bad names and lifetimes: 400; missing project: 404.
    api.post(
        "/api/v1/projects/ci-prj/robots",
        ADMIN,
        json!({"name": "builder"}),
    )
    .await
    .expect(409);
    for bad in [
        json!({"name": "Bad"}),
        json!({"name": "a+b"}),
        json!({"name": "ok", "expires_in_days": 0}),
    ] {
        api.post("/api/v1/projects/ci-prj/robots", ADMIN, bad)
            .await
            .expect(400);
    }
    api.post("/api/v1/projects/nope/robots", ADMIN, json!({"name": "x"}))
        .await
        .expect(404);

    // docker-style Basic on /v2/: push and pull in its project…
    let robot = As::Basic(&name, &secret);
    assert_eq!(
        api.push("ci-prj/app", "v1", robot).await,
        StatusCode::CREATED
    );
    assert_eq!(api.pull("ci-prj/app", "v1", robot).await, StatusCode::OK);
    // …nothing in another private project (403, like any authenticated outsider)…
    assert_eq!(
        api.pull("secret-prj/app", "v1", robot).await,
        StatusCode::FORBIDDEN
    );
    // …pull only in public ones.
    assert_eq!(
        api.push("library/app", "v1", ADMIN).await,
        StatusCode::CREATED
    );
    assert_eq!(api.pull("library/app", "v1", robot).await, StatusCode::OK);
    assert_eq!(
        api.push("library/app", "v2", robot).await,
        StatusCode::FORBIDDEN
    );
    // Its own view of itself.
    let me = api.get("/api/v1/me", robot).await;
    assert_eq!(
        *me.expect(200),
        json!({"name": name, "kind": "robot", "admin": false, "projects": [{"project": "ci-prj", "role": "developer"}]})
    );

    // The token endpoint grants what the robot may do, and the token works on /v2/.
    let t = api.token(robot, "repository:ci-prj/app:pull,push").await;
    let token = t.expect(200)["token"].as_str().unwrap().to_string();
    assert_eq!(
        api.push("ci-prj/app", "v2", As::Bearer(&token)).await,
        StatusCode::CREATED
    );
    let t = api.token(robot, "repository:secret-prj/app:pull").await;
    let no_access = t.expect(200)["token"].as_str().unwrap().to_string();
    // Refused either way: 401 (the token does not name it) or 403 (named, no actions).
    let refused = api
        .pull("secret-prj/app", "v1", As::Bearer(&no_access))
        .await;
    assert!(
        [StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN].contains(&refused),
        "{refused}"
    );

    // A pull-only robot.
    let r = api
        .post(
            "/api/v1/projects/ci-prj/robots",
            ADMIN,
            json!({"name": "puller"}),
        )
        .await;
    let pull_secret = r.expect(201)["secret"].as_str().unwrap().to_string();
    let puller = As::Basic("robot$ci-prj+puller", &pull_secret);
    assert_eq!(api.pull("ci-prj/app", "v1", puller).await, StatusCode::OK);
    assert_eq!(
        api.push("ci-prj/app", "v3", puller).await,
        StatusCode::FORBIDDEN
    );
    let t = api.token(puller, "repository:ci-prj/app:pull,push").await;
    let granted = t.expect(200)["token"].as_str().unwrap().to_string();
    assert_eq!(
        api.push("ci-prj/app", "v3", As::Bearer(&granted)).await,
        StatusCode::FORBIDDEN,
        "a pull-only token must not push"
    );
    // Wrong secret: 401.
    assert_eq!(
        api.pull("ci-prj/app", "v1", As::Basic(&name, "wrong-secret"))
            .await,
        StatusCode::UNAUTHORIZED
    );

    // Revocation takes effect at once: Basic, the token endpoint, tokens already issued.
    let r = api
        .delete(
            &format!(
                "/api/v1/projects/ci-prj/robots/{}",
                name.replace('$', "%24").replace('+', "%2B")
            ),
            ADMIN,
        )
        .await;
    let revoked = r.expect(200);
    assert_eq!(
        (revoked["revoked"].clone(), revoked["active"].clone()),
        (json!(true), json!(false))
    );
    assert_eq!(
        api.pull("ci-prj/app", "v1", robot).await,
        StatusCode::UNAUTHORIZED
    );
    api.token(robot, "repository:ci-prj/app:pull")
        .await
        .expect(401);
    assert_eq!(
        api.pull("ci-prj/app", "v1", As::Bearer(&token)).await,
        StatusCode::UNAUTHORIZED
    );
    api.get("/api/v1/me", robot).await.expect(401);
    let list = api.get("/api/v1/projects/ci-prj/robots", ADMIN).await;
    let list = list.expect(200).clone();
    assert_eq!(list[0]["name"], name);
    assert_eq!(list[0]["revoked"], true);
    // The other robot still works; revoke by short name and purge it.
    assert_eq!(api.pull("ci-prj/app", "v1", puller).await, StatusCode::OK);
    api.delete("/api/v1/projects/ci-prj/robots/puller?purge=true", ADMIN)
        .await
        .expect(204);
    assert_eq!(
        api.pull("ci-prj/app", "v1", puller).await,
        StatusCode::UNAUTHORIZED
    );
    api.delete("/api/v1/projects/ci-prj/robots/puller", ADMIN)
        .await
        .expect(404);
    // A robot of one project cannot be addressed through another.
    api.delete(
        &format!(
            "/api/v1/projects/secret-prj/robots/{}",
            name.replace('$', "%24").replace('+', "%2B")
        ),
        ADMIN,
    )
    .await
    .expect(404);
    let list = api.get("/api/v1/projects/ci-prj/robots", ADMIN).await;
    assert_eq!(names(list.expect(200), "name"), [name.as_str()]);
}

#[tokio::test]
async fn audit_log_records_every_change() {
    let api = Api::start();
    let start = now();
    api.add_user("alice").await;
    let alice = As::Basic("alice", PW);
    api.post(
        "/api/v1/projects",
        alice,
        json!({"name": "audited", "public": true}),
    )
    .await
    .expect(201);
    api.patch("/api/v1/projects/audited", alice, json!({"public": false}))
        .await
        .expect(200);
    api.add_user("bob").await;
    api.member("audited", "bob", "guest").await;
    api.delete("/api/v1/projects/audited/members/bob", alice)
        .await
        .expect(204);
    let r = api
        .post(
            "/api/v1/projects/audited/robots",
            alice,
            json!({"name": "bot", "push": true}),
        )
        .await;
    let secret = r.expect(201)["secret"].as_str().unwrap().to_string();
    api.delete("/api/v1/projects/audited/robots/bot", alice)
        .await
        .expect(200);
    api.delete("/api/v1/projects/audited/robots/bot?purge=true", alice)
        .await
        .expect(204);
    api.patch(
        "/api/v1/users/bob",
        ADMIN,
        json!({"password": "bob-password-2"}),
    )
    .await
    .expect(200);
    api.patch("/api/v1/users/bob", ADMIN, json!({"admin": true}))
        .await
        .expect(200);
    api.delete("/api/v1/users/bob", ADMIN).await.expect(204);
    api.delete("/api/v1/projects/audited", alice)
        .await
        .expect(204);
    api.get("/api/v1/me", As::Basic("alice", "wrong-password"))
        .await
        .expect(401);
    assert_eq!(
        api.push("library/audit", "v1", ADMIN).await,
        StatusCode::CREATED
    );

    let events = api.audit("limit=1000").await;
    let find = |action: &str, resource: &str| -> Value {
        events
            .iter()
            .find(|e| e["action"] == action && e["resource"] == resource)
            .unwrap_or_else(|| panic!("no {action} on {resource} in {events:#?}"))
            .clone()
    };
    for (actor, action, resource, detail) in [
        ("admin", "user.create", "user:alice", ""),
        ("alice", "project.create", "project:audited", "public"),
        ("alice", "project.update", "project:audited", "private"),
        ("admin", "member.set", "project:audited/member:bob", "guest"),
        ("alice", "member.remove", "project:audited/member:bob", ""),
        (
            "alice",
            "robot.create",
            "project:audited/robot:robot$audited+bot",
            "pull,push",
        ),
        (
            "alice",
            "robot.revoke",
            "project:audited/robot:robot$audited+bot",
            "",
        ),
        (
            "alice",
            "robot.delete",
            "project:audited/robot:robot$audited+bot",
            "",
        ),
        ("admin", "user.password", "user:bob", ""),
        ("admin", "user.admin", "user:bob", "true"),
        ("admin", "user.delete", "user:bob", ""),
        ("alice", "project.delete", "project:audited", ""),
        ("alice", "login_failed", "alice", ""),
    ] {
        let e = find(action, resource);
        assert_eq!(e["actor"], actor, "{e}");
        assert_eq!(e["detail"], detail, "{e}");
        assert_eq!(e["client_addr"], "127.0.0.1", "{e}");
        let at = e["at"].as_i64().unwrap();
        assert!(at >= start - 1 && at <= now() + 1, "{e}");
    }
    assert!(
        events.iter().any(|e| e["action"] == "push"),
        "no push event"
    );
    // Nothing secret is ever recorded.
    let all = serde_json::to_string(&events).unwrap();
    for s in [
        secret.as_str(),
        PW,
        "bob-password-2",
        "wrong-password",
        ADMIN_PASSWORD,
    ] {
        assert!(!all.contains(s), "audit log contains a secret");
    }
    // Newest first, ids strictly decreasing.
    let ids: Vec<i64> = events.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]));

    // Filters.
    let by_alice = api.audit("actor=alice").await;
    assert!(!by_alice.is_empty() && by_alice.iter().all(|e| e["actor"] == "alice"));
    let deletes = api.audit("action=user.delete").await;
    assert_eq!(deletes.len(), 1);
    let project = api.audit("resource=project:audited").await;
    assert!(project.len() >= 8);
    assert!(project.iter().all(|e| {
        e["resource"]
            .as_str()
            .unwrap()
            .starts_with("project:audited")
    }));
    let two = api.audit("limit=2").await;
    assert_eq!(two.len(), 2);
    let next = api.audit(&format!("limit=2&before={}", two[1]["id"])).await;
    assert_eq!(next[0]["id"], ids[2]);
    assert!(
        api.audit(&format!("since={}", now() + 100))
            .await
            .is_empty()
    );
    assert!(
        api.audit(&format!("until={}", start - 100))
            .await
            .is_empty()
    );
    // Reading it is for administrators (and is refused to robots and users).
    api.get("/api/v1/audit", As::Basic("alice", PW))
        .await
        .expect(403);
}
