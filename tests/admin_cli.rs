//! `berth project|user|robot|audit` on a data directory: on its own (no server), and
//! next to a running `berth serve` on the same directory, whose clients see the changes.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ADMIN_PASSWORD, Berth, ChildGuard, CmdOutput, basic_auth, berth_bin};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// Run `berth ARGS --data DATA`, feeding `stdin`; killed by PID if it takes over 60 s.
fn cli(data: &Path, args: &[&str], stdin: Option<&str>) -> CmdOutput {
    let mut cmd = Command::new(berth_bin());
    cmd.args(args)
        .arg("--data")
        .arg(data)
        .env("BERTH_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env_remove("BERTH_DATA")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let cmdline = format!("berth {}", args.join(" "));
    let mut guard = ChildGuard::spawn("berth", &mut cmd);
    let mut input = guard.child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    let mut out = guard.child.stdout.take().unwrap();
    let mut err = guard.child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = guard.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "timed out: {cmdline}");
        std::thread::sleep(Duration::from_millis(10));
    };
    drop(guard);
    CmdOutput {
        status,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
        cmdline,
    }
}

/// Run and parse `--output json`.
fn cli_json(data: &Path, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["--output", "json"]);
    let out = cli(data, &all, None).ok();
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {}", out.cmdline, out.stdout))
}

/// Run, expecting failure; stderr.
#[track_caller]
fn cli_fails(data: &Path, args: &[&str]) -> String {
    let out = cli(data, args, None);
    assert!(
        !out.success(),
        "{} should fail: {}",
        out.cmdline,
        out.stdout
    );
    assert!(out.stderr.contains("berth: error:"), "{}", out.stderr);
    out.stderr
}

fn names(v: &Value, key: &str) -> Vec<String> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x[key].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn manages_a_data_directory_without_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = data.as_path();

    // A fresh directory gets the first-start setup: library and admin.
    let out = cli(d, &["project", "list"], None).ok();
    assert!(out.stdout.starts_with("NAME"), "{}", out.stdout);
    assert!(out.stdout.contains("library") && out.stdout.contains("public"));
    assert!(
        !out.stderr.contains(ADMIN_PASSWORD),
        "a given password is never printed"
    );

    // Projects.
    let out = cli(
        d,
        &["project", "create", "team", "--description", "Team"],
        None,
    )
    .ok();
    assert_eq!(out.stdout, "created private project team\n");
    let p = cli_json(d, &["project", "create", "pub", "--public"]);
    assert_eq!(
        (p["name"].as_str(), p["public"].as_bool()),
        (Some("pub"), Some(true))
    );
    cli_fails(d, &["project", "create", "team"]);
    cli_fails(d, &["project", "create", "Bad/Name"]);
    let list = cli_json(d, &["project", "list"]);
    assert_eq!(names(&list, "name"), ["library", "pub", "team"]);
    let p = cli_json(
        d,
        &[
            "project",
            "update",
            "team",
            "--public",
            "--description",
            "T2",
        ],
    );
    assert_eq!(
        (p["public"].as_bool(), p["description"].as_str()),
        (Some(true), Some("T2"))
    );
    let p = cli_json(d, &["project", "update", "team", "--private"]);
    assert_eq!(p["public"], false);
    cli_fails(d, &["project", "update", "team"]);
    cli_fails(d, &["project", "update", "nope", "--public"]);
    cli(d, &["project", "delete", "pub"], None).ok();
    cli_fails(d, &["project", "delete", "pub"]);

    // Users: generated password printed once; from stdin; never the hash.
    let out = cli(d, &["user", "add", "alice"], None).ok();
    let generated = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("password (shown only now): "))
        .expect("generated password")
        .to_string();
    assert!(generated.len() >= 32);
    cli(
        d,
        &["user", "add", "bob", "--admin", "--password-stdin"],
        Some("bob-password-1\n"),
    )
    .ok();
    let out = cli(
        d,
        &["user", "add", "carol", "--password-stdin"],
        Some("short\n"),
    );
    assert!(
        !out.success() && out.stderr.contains("too short"),
        "{}",
        out.stderr
    );
    let users = cli_json(d, &["user", "list"]);
    assert_eq!(names(&users, "name"), ["admin", "alice", "bob"]);
    assert_eq!(users[2]["admin"], true);
    assert!(!users.to_string().contains("argon2"));
    let out = cli(d, &["user", "list"], None).ok();
    assert!(out.stdout.starts_with("NAME") && out.stdout.contains("alice"));
    // Password changes: from stdin, or generated.
    cli(
        d,
        &["user", "passwd", "alice", "--password-stdin"],
        Some("alice-password-2\n"),
    )
    .ok();
    let v = cli_json(d, &["user", "passwd", "alice"]);
    assert!(v["password"].as_str().unwrap().len() >= 32);
    cli_fails(d, &["user", "passwd", "ghost", "--password-stdin"]);

    // Members.
    let m = cli_json(
        d,
        &[
            "project",
            "member",
            "add",
            "team",
            "alice",
            "--role",
            "developer",
        ],
    );
    assert_eq!(m["role"], "developer");
    cli(
        d,
        &[
            "project",
            "member",
            "add",
            "team",
            "bob",
            "--role",
            "maintainer",
        ],
        None,
    )
    .ok();
    let err = cli_fails(
        d,
        &[
            "project", "member", "add", "team", "alice", "--role", "owner",
        ],
    );
    assert!(err.contains("project_admin"), "{err}");
    cli_fails(
        d,
        &[
            "project", "member", "add", "team", "ghost", "--role", "guest",
        ],
    );
    let out = cli(d, &["project", "member", "list", "team"], None).ok();
    assert_eq!(
        out.stdout,
        "USER   ROLE\nalice  developer\nbob    maintainer\n"
    );
    cli(d, &["project", "member", "remove", "team", "bob"], None).ok();
    let ms = cli_json(d, &["project", "member", "list", "team"]);
    assert_eq!(names(&ms, "user"), ["alice"]);
    cli_fails(d, &["project", "member", "remove", "team", "bob"]);

    // Robots: the secret once, never in listings.
    let r = cli_json(
        d,
        &[
            "robot",
            "create",
            "team",
            "ci",
            "--push",
            "--expires-in-days",
            "7",
            "--description",
            "CI",
        ],
    );
    assert_eq!(r["name"], "robot$team+ci");
    let secret = r["secret"].as_str().unwrap().to_string();
    assert!(r["expires_at"].is_i64());
    let out = cli(d, &["robot", "create", "team", "puller"], None).ok();
    assert!(
        out.stdout.contains("secret (shown only now"),
        "{}",
        out.stdout
    );
    let out = cli(d, &["robot", "list", "team"], None).ok();
    assert!(out.stdout.contains("robot$team+ci") && out.stdout.contains("pull,push"));
    assert!(!out.stdout.contains(&secret));
    let list = cli_json(d, &["robot", "list", "team"]);
    assert_eq!(names(&list, "name"), ["robot$team+ci", "robot$team+puller"]);
    assert!(!list.to_string().contains(&secret));
    let r = cli_json(d, &["robot", "revoke", "robot$team+ci"]);
    assert_eq!(r["revoked"], true);
    let out = cli(d, &["robot", "list", "team"], None).ok();
    assert!(out.stdout.contains("revoked"), "{}", out.stdout);
    cli(d, &["robot", "delete", "robot$team+puller"], None).ok();
    cli_fails(d, &["robot", "revoke", "robot$team+puller"]);
    cli_fails(d, &["robot", "revoke", "puller"]);

    // The last administrator stays.
    cli(d, &["user", "admin", "bob", "--revoke"], None).ok();
    let err = cli_fails(d, &["user", "delete", "admin"]);
    assert!(err.contains("last system administrator"), "{err}");
    cli_fails(d, &["user", "admin", "admin", "--revoke"]);
    cli(d, &["user", "delete", "bob"], None).ok();

    // Every change is in the audit log as local-admin.
    let events = cli_json(d, &["audit", "--limit", "1000"]);
    let actions: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for a in [
        "project.create",
        "project.update",
        "project.delete",
        "user.create",
        "user.password",
        "user.admin",
        "user.delete",
        "member.set",
        "member.remove",
        "robot.create",
        "robot.revoke",
        "robot.delete",
    ] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["actor"] == "local-admin")
    );
    let only = cli_json(d, &["audit", "--action", "robot.create", "--limit", "1"]);
    assert_eq!(only.as_array().unwrap().len(), 1);
    assert_eq!(only[0]["resource"], "project:team/robot:robot$team+puller");
    let out = cli(d, &["audit", "--actor", "local-admin"], None).ok();
    assert!(out.stdout.starts_with("TIME") && out.stdout.contains("member.set"));
    let none = cli_json(d, &["audit", "--actor", "nobody"]);
    assert_eq!(none, serde_json::json!([]));
    assert!(!events.to_string().contains(&secret));
}

#[test]
fn generates_the_admin_password_on_a_fresh_directory() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(berth_bin());
    cmd.args(["user", "list", "--output", "json", "--data"])
        .arg(dir.path())
        .env_remove("BERTH_ADMIN_PASSWORD")
        .env_remove("BERTH_DATA");
    let out = common::run_cmd(&mut cmd, Duration::from_secs(60)).ok();
    // The password goes to stderr, once; stdout stays JSON.
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(names(&v, "name"), ["admin"]);
    assert!(
        out.stderr
            .contains("administrator account \"admin\" with password: ")
    );
    let again = cli(dir.path(), &["user", "list"], None).ok();
    assert!(!again.stderr.contains("password"), "{}", again.stderr);
}

/// The CLI next to a running server on the same data directory.
#[tokio::test]
async fn works_beside_a_running_server() {
    let berth = Berth::start();
    let d = berth.data.path().to_path_buf();
    let http = berth.anon_client();
    let url = berth.url();
    let basic = |u: &str, p: &str| basic_auth(u, p);

    // Made by the CLI, used over HTTP at once.
    cli(&d, &["project", "create", "ci-prj"], None).ok();
    cli(
        &d,
        &["user", "add", "dev", "--password-stdin"],
        Some("dev-password-1"),
    )
    .ok();
    cli(
        &d,
        &[
            "project",
            "member",
            "add",
            "ci-prj",
            "dev",
            "--role",
            "developer",
        ],
        None,
    )
    .ok();
    let r = http
        .get(format!("{url}/api/v1/me"))
        .header("authorization", basic("dev", "dev-password-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let me: Value = r.json().await.unwrap();
    assert_eq!(me["projects"][0]["project"], "ci-prj");
    assert_eq!(me["projects"][0]["role"], "developer");

    let robot = cli_json(&d, &["robot", "create", "ci-prj", "ci", "--push"]);
    let (name, secret) = (
        robot["name"].as_str().unwrap().to_string(),
        robot["secret"].as_str().unwrap().to_string(),
    );
    // The robot pushes with docker-style Basic.
    let config = b"{\"cli\":true}".to_vec();
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&config)));
    let r = http
        .post(format!(
            "{url}/v2/ci-prj/app/blobs/uploads/?digest={digest}"
        ))
        .header("authorization", basic(&name, &secret))
        .header("content-type", "application/octet-stream")
        .body(config.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // A token issued now is refused as soon as the CLI revokes the robot.
    let t: Value = http
        .get(format!(
            "{url}/service/token?service=berth&scope=repository:ci-prj/app:pull"
        ))
        .header("authorization", basic(&name, &secret))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = t["token"].as_str().unwrap().to_string();
    let head = |tok: String| {
        let http = http.clone();
        let url = url.clone();
        let digest = digest.clone();
        async move {
            http.head(format!("{url}/v2/ci-prj/app/blobs/{digest}"))
                .header("authorization", format!("Bearer {tok}"))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(head(token.clone()).await, 200);
    cli(&d, &["robot", "revoke", &name], None).ok();
    // The server remembers principals for at most a second (changes it makes itself apply
    // at once; the CLI is another process).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    let mut status = head(token.clone()).await;
    while status != 401 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        status = head(token.clone()).await;
    }
    assert_eq!(
        status, 401,
        "a robot revoked by the CLI is refused within a second"
    );

    // Made over HTTP, seen by the CLI; one audit log with both.
    let r = http
        .post(format!("{url}/api/v1/users"))
        .header("authorization", basic("admin", ADMIN_PASSWORD))
        .json(&serde_json::json!({"name": "from-api", "password": "api-password-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let users = cli_json(&d, &["user", "list"]);
    assert_eq!(names(&users, "name"), ["admin", "dev", "from-api"]);
    let events = cli_json(&d, &["audit"]);
    let find = |action: &str, resource: &str| {
        events
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["action"] == action && e["resource"] == resource)
            .unwrap_or_else(|| panic!("{action} {resource} not in {events:#}"))
            .clone()
    };
    let e = find("user.create", "user:from-api");
    assert_eq!(
        (e["actor"].as_str(), e["client_addr"].as_str()),
        (Some("admin"), Some("127.0.0.1"))
    );
    let e = find("robot.revoke", "project:ci-prj/robot:robot$ci-prj+ci");
    assert_eq!(e["actor"], "local-admin");
    let e = find("login", &name);
    assert_eq!(e["actor"], name.as_str());
    // The server is still healthy after all of it.
    let r = http.get(format!("{url}/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}
