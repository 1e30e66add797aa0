//! The [`RemoteStore`] conformance suite (registries, health, proxy projects), run by every
//! metadata backend on a fresh, empty store that also implements [`AccountStore`].

use crate::accounts::{AccountStore, Project};
use crate::remotes::{RegistryHealth, RemoteRegistry, RemoteStore};
use crate::{StorageError, StorageResult};

fn ok<T>(result: StorageResult<T>, what: &str) -> T {
    match result {
        Ok(v) => v,
        Err(e) => panic!("{what}: unexpected error: {e} ({e:?})"),
    }
}

fn err<T: std::fmt::Debug>(result: StorageResult<T>, what: &str) -> StorageError {
    match result {
        Ok(v) => panic!("{what}: expected an error, got {v:?}"),
        Err(e) => e,
    }
}

fn registry(name: &str, url: &str) -> RemoteRegistry {
    RemoteRegistry {
        name: name.into(),
        url: url.into(),
        username: "puller".into(),
        secret_sealed: vec![0, 1, 2, 255],
        ca_pem: "-----BEGIN CERTIFICATE-----\n…\n-----END CERTIFICATE-----\n".into(),
        insecure: false,
        description: "upstream".into(),
        created_at: 1_700_000_000,
        updated_at: 1_700_000_000,
    }
}

pub async fn remote_store_suite<S: RemoteStore + AccountStore>(store: &S) {
    assert!(ok(store.list_registries().await, "list empty").is_empty());
    assert_eq!(ok(store.registry("hub").await, "missing"), None);

    let hub = registry("hub", "https://registry-1.docker.io");
    let mut dist = registry("dist", "https://127.0.0.1:5000");
    dist.secret_sealed = Vec::new();
    dist.username = String::new();
    ok(store.create_registry(&hub).await, "create hub");
    ok(store.create_registry(&dist).await, "create dist");
    let e = err(
        store.create_registry(&registry("hub", "https://x")).await,
        "duplicate",
    );
    assert!(matches!(e, StorageError::AlreadyExists(_)), "{e:?}");
    assert_eq!(
        ok(store.registry("hub").await, "get"),
        Some(hub.clone()),
        "round trip"
    );
    let names: Vec<String> = ok(store.list_registries().await, "list")
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["dist", "hub"], "listed by name");

    // Update replaces everything but the name and the creation time.
    let mut changed = hub.clone();
    changed.url = "https://mirror.example:8443".into();
    changed.insecure = true;
    changed.secret_sealed = vec![9; 60];
    changed.updated_at = 1_700_000_100;
    ok(store.update_registry(&changed).await, "update");
    assert_eq!(
        ok(store.registry("hub").await, "get"),
        Some(changed.clone())
    );
    let e = err(
        store.update_registry(&registry("nope", "https://x")).await,
        "update missing",
    );
    assert!(matches!(e, StorageError::NotFound(_)), "{e:?}");

    // Health: upsert, and a health row for a missing registry is refused.
    assert_eq!(ok(store.registry_health("hub").await, "no health"), None);
    let mut health = RegistryHealth {
        name: "hub".into(),
        checked_at: 10,
        ok: false,
        message: "connection refused".into(),
    };
    ok(store.set_registry_health(&health).await, "health");
    health.ok = true;
    health.checked_at = 20;
    health.message = "reachable".into();
    ok(store.set_registry_health(&health).await, "health again");
    assert_eq!(
        ok(store.registry_health("hub").await, "health"),
        Some(health)
    );
    let e = err(
        store
            .set_registry_health(&RegistryHealth {
                name: "nope".into(),
                checked_at: 1,
                ok: true,
                message: String::new(),
            })
            .await,
        "health of a missing registry",
    );
    assert!(matches!(e, StorageError::NotFound(_)), "{e:?}");

    // Proxy projects hold on to their registry and go with their project.
    let project = Project {
        name: "cache".into(),
        public: true,
        description: String::new(),
        created_at: 1,
    };
    ok(store.create_project(&project).await, "project");
    assert_eq!(ok(store.project_proxy("cache").await, "not a proxy"), None);
    ok(
        store.set_project_proxy("cache", Some("hub")).await,
        "make proxy",
    );
    assert_eq!(
        ok(store.project_proxy("cache").await, "proxy"),
        Some("hub".into())
    );
    assert_eq!(
        ok(store.proxy_projects().await, "proxies"),
        [("cache".to_string(), "hub".to_string())]
    );
    let e = err(
        store.set_project_proxy("ghost", Some("hub")).await,
        "missing project",
    );
    assert!(matches!(e, StorageError::NotFound(_)), "{e:?}");
    let e = err(
        store.set_project_proxy("cache", Some("ghost")).await,
        "missing registry",
    );
    assert!(matches!(e, StorageError::NotFound(_)), "{e:?}");
    assert_eq!(
        ok(store.project_proxy("cache").await, "unchanged"),
        Some("hub".into())
    );
    let e = err(
        store.delete_registry("hub").await,
        "delete a registry in use",
    );
    assert!(matches!(e, StorageError::Conflict(_)), "{e:?}");
    assert!(ok(store.registry("hub").await, "still there").is_some());
    ok(
        store.set_project_proxy("cache", Some("dist")).await,
        "switch upstream",
    );
    ok(store.delete_registry("hub").await, "delete once unused");
    assert_eq!(ok(store.registry("hub").await, "gone"), None);
    assert_eq!(ok(store.registry_health("hub").await, "health gone"), None);
    let e = err(store.delete_registry("hub").await, "delete twice");
    assert!(matches!(e, StorageError::NotFound(_)), "{e:?}");
    ok(store.delete_project("cache").await, "delete the project");
    assert!(ok(store.proxy_projects().await, "no proxies").is_empty());
    ok(store.delete_registry("dist").await, "delete the last");
    ok(
        store.set_project_proxy("ghost", None).await,
        "clearing is idempotent",
    );
}
