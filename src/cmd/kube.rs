//! Kubernetes glue: `berth kube pull-secret`, `berth kube ca-bundle`, `berth trust`,
//! `berth credential-provider`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use berth_client::creds::{AuthEntry, config_key};
use berth_client::kube::{ca_bundle_configmap, credential_provider, pull_secret_manifest};
use berth_client::trust::describe_pem_file;
use berth_client::{DockerConfig, Keyring};
use clap::{Args, Subcommand};

use super::client::normalize_host;

#[derive(Subcommand)]
pub enum KubeCommands {
    /// Print Kubernetes manifests for pull secrets and the fetcher's CA bundle.
    #[command(subcommand)]
    Kube(KubeCommand),
    /// Trust a CA for one registry: writes Docker certs.d/HOST/ca.crt and containerd
    /// certs.d/HOST/{ca.crt,hosts.toml}.
    Trust(TrustCmdArgs),
    /// kubelet image credential provider (credentialprovider.kubelet.k8s.io/v1): request on
    /// stdin, response on stdout, from stored logins and pull secrets.
    CredentialProvider(CredentialProviderArgs),
}

#[derive(Subcommand)]
pub enum KubeCommand {
    /// A kubernetes.io/dockerconfigjson Secret from the stored login(s).
    PullSecret(PullSecretArgs),
    /// The image-fetcher-ca-bundle ConfigMap (kube-system, key ca-bundle) with these CAs
    /// appended (no duplicates).
    CaBundle(CaBundleArgs),
}

#[derive(Args)]
pub struct PullSecretArgs {
    #[arg(long)]
    pub name: String,
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// Registry whose login to include (repeatable) [default: every stored login].
    #[arg(long)]
    pub registry: Vec<String>,
    /// Docker config directory [default: $DOCKER_CONFIG or ~/.docker].
    #[arg(long = "docker-config", value_name = "DIR")]
    pub docker_config: Option<PathBuf>,
}

#[derive(Args)]
pub struct CaBundleArgs {
    /// PEM file of CA certificates to add (repeatable).
    #[arg(long, required = true)]
    pub ca: Vec<PathBuf>,
    /// The current ConfigMap (e.g. `kubectl -n kube-system get configmap
    /// image-fetcher-ca-bundle -o yaml`), to append to.
    #[arg(long)]
    pub existing: Option<PathBuf>,
}

#[derive(Args)]
pub struct TrustCmdArgs {
    /// Registry as clients reach it: HOST or HOST:PORT.
    pub host: String,
    /// The CA certificate (PEM) that signed the registry's certificate.
    #[arg(long)]
    pub ca: PathBuf,
    #[arg(long, default_value = "/etc/docker/certs.d")]
    pub docker_dir: PathBuf,
    #[arg(long, default_value = "/etc/containerd/certs.d")]
    pub containerd_dir: PathBuf,
    /// Also make containerd pull this upstream registry (e.g. https://registry-1.docker.io)
    /// through the proxy-cache project --project of this Berth: writes (and prints)
    /// CONTAINERD_DIR/<upstream host>/hosts.toml with `override_path = true`.
    #[arg(long, value_name = "URL", requires = "project")]
    pub mirror_of: Option<String>,
    /// The proxy-cache project mirroring --mirror-of.
    #[arg(long)]
    pub project: Option<String>,
}

#[derive(Args)]
pub struct CredentialProviderArgs {
    /// Docker config directory [default: $DOCKER_CONFIG or ~/.docker].
    #[arg(long = "docker-config", value_name = "DIR")]
    pub docker_config: Option<PathBuf>,
    /// Pull secret manifests to answer from as well (repeatable).
    #[arg(long = "pull-secret", value_name = "FILE")]
    pub pull_secret: Vec<PathBuf>,
}

pub fn run(cmd: KubeCommands) -> anyhow::Result<()> {
    match cmd {
        KubeCommands::Kube(KubeCommand::PullSecret(a)) => pull_secret(a),
        KubeCommands::Kube(KubeCommand::CaBundle(a)) => {
            let existing = match &a.existing {
                Some(p) => Some(
                    std::fs::read_to_string(p)
                        .with_context(|| format!("reading {}", p.display()))?,
                ),
                None => None,
            };
            let mut add = Vec::new();
            for p in &a.ca {
                let pem = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
                add.push((p.display().to_string(), pem));
            }
            let (yaml, total, added) =
                ca_bundle_configmap(existing.as_deref(), &add).map_err(anyhow::Error::msg)?;
            print!("{yaml}");
            eprintln!(
                "berth: ConfigMap kube-system/image-fetcher-ca-bundle: {total} certificates \
                 ({added} added); apply with `kubectl apply -f -`"
            );
            Ok(())
        }
        KubeCommands::Trust(a) => trust(a),
        KubeCommands::CredentialProvider(a) => {
            let mut req = String::new();
            std::io::stdin()
                .read_to_string(&mut req)
                .context("reading the CredentialProviderRequest from stdin")?;
            let mut k = Keyring::new();
            for f in &a.pull_secret {
                k.add_pull_secret_file(f)?;
            }
            let dir = a
                .docker_config
                .unwrap_or_else(berth_client::default_config_dir);
            let k = k.with_docker_config(DockerConfig::load_dir(&dir)?);
            let out = credential_provider(&req, &k)?;
            let mut so = std::io::stdout();
            so.write_all(out.as_bytes())?;
            so.write_all(b"\n")?;
            Ok(())
        }
    }
}

fn pull_secret(a: PullSecretArgs) -> anyhow::Result<()> {
    let dir = a
        .docker_config
        .unwrap_or_else(berth_client::default_config_dir);
    let cfg = DockerConfig::load_dir(&dir)?;
    let registries: Vec<String> = if a.registry.is_empty() {
        cfg.auths().keys().cloned().collect()
    } else {
        a.registry
            .iter()
            .map(|r| normalize_host(r))
            .collect::<anyhow::Result<_>>()?
    };
    if registries.is_empty() {
        bail!(
            "no stored logins in {}/config.json: run `berth login HOST` first",
            dir.display()
        );
    }
    let mut auths = BTreeMap::new();
    for r in &registries {
        let host = normalize_host(r)?;
        let found = cfg.lookup(&host, "")?;
        let Some(c) = found.into_iter().next() else {
            bail!(
                "no stored login for {host} in {}/config.json: run `berth login {host}` first",
                dir.display()
            );
        };
        let mut e = AuthEntry::basic(&c.username, &c.password);
        if let Some(t) = c.identity_token {
            e = AuthEntry {
                identitytoken: Some(t),
                ..AuthEntry::default()
            };
        }
        auths.insert(config_key(&host), e);
    }
    print!("{}", pull_secret_manifest(&a.name, &a.namespace, &auths));
    eprintln!(
        "berth: Secret {}/{} of type kubernetes.io/dockerconfigjson for {}; apply with \
         `kubectl apply -f -` and name it under imagePullSecrets",
        a.namespace,
        a.name,
        registries.join(", ")
    );
    Ok(())
}

fn write_file(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    std::fs::write(path, data).with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}

fn trust(a: TrustCmdArgs) -> anyhow::Result<()> {
    let host = normalize_host(&a.host)?;
    let certs = describe_pem_file(&a.ca)?;
    let pem = std::fs::read(&a.ca).with_context(|| format!("reading {}", a.ca.display()))?;
    for c in &certs {
        println!(
            "CA: subject {} (issuer {}, valid until {})",
            c.subject, c.issuer, c.not_after
        );
    }
    write_file(&a.docker_dir.join(&host).join("ca.crt"), &pem)?;
    let cd = a.containerd_dir.join(&host);
    let ca_path = cd.join("ca.crt");
    write_file(&ca_path, &pem)?;
    let ca_str = std::path::absolute(&ca_path)
        .unwrap_or(ca_path.clone())
        .display()
        .to_string();
    let hosts = format!(
        "server = \"https://{host}\"\n\n[host.\"https://{host}\"]\n  capabilities = [\"pull\", \"resolve\", \"push\"]\n  ca = {}\n",
        toml_string(&ca_str)
    );
    write_file(&cd.join("hosts.toml"), hosts.as_bytes())?;
    if let (Some(upstream), Some(project)) = (&a.mirror_of, &a.project) {
        let upstream = berth_server::proxy::containerd_server(upstream);
        let snippet = berth_server::proxy::containerd_mirror_snippet(
            &upstream,
            &format!("https://{host}"),
            project,
            Some(&ca_str),
        );
        let dir = a
            .containerd_dir
            .join(berth_server::proxy::containerd_host_dir(&upstream));
        write_file(&dir.join("hosts.toml"), snippet.as_bytes())?;
        println!("# {}", dir.join("hosts.toml").display());
        print!("{snippet}");
    }
    Ok(())
}

fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
