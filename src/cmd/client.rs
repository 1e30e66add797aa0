//! Client commands: `login`, `logout`, `pull`, `push`, `copy`, `tag`, `inspect`, `ls`, `rm`.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;

use anyhow::{Context, bail};
use berth_client::copy::{Location, Platforms};
use berth_client::creds::{Credential, config_key};
use berth_client::image::{Platform, is_index_type};
use berth_client::{ClientOptions, DockerConfig, ImageRef, Keyring, RegistryClient, TrustOptions};
use clap::{Args, Subcommand};

/// Where certificates and insecure-registry settings come from.
#[derive(Args, Clone, Debug, Default)]
pub struct TrustArgs {
    /// PEM file of extra CA certificates (any number, one after another). Repeatable.
    #[arg(long = "ca-bundle", value_name = "FILE")]
    pub ca_bundle: Vec<PathBuf>,
    /// Kubernetes ConfigMap (YAML/JSON) `image-fetcher-ca-bundle` whose `data.ca-bundle` holds
    /// PEM CA certificates. Repeatable.
    #[arg(long = "ca-configmap", value_name = "FILE")]
    pub ca_configmap: Vec<PathBuf>,
    /// Docker-style per-registry CA directory (`DIR/<host[:port]>/*.crt`, and a client
    /// certificate `client.cert` + `client.key` for registries that require one).
    /// Repeatable [default: /etc/docker/certs.d and /etc/containers/certs.d].
    #[arg(long = "certs-dir", value_name = "DIR")]
    pub certs_dir: Vec<PathBuf>,
    /// containerd hosts directory (`DIR/<host[:port]>/hosts.toml`). Repeatable
    /// [default: /etc/containerd/certs.d].
    #[arg(long = "hosts-dir", value_name = "DIR")]
    pub hosts_dir: Vec<PathBuf>,
    /// Registry (HOST[:PORT] or CIDR) that may be reached without certificate verification
    /// or over plain HTTP. Repeatable.
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]|CIDR")]
    pub insecure_registry: Vec<String>,
    /// Docker daemon.json whose "insecure-registries" to honour (read if it exists).
    #[arg(
        long = "daemon-json",
        value_name = "FILE",
        default_value = "/etc/docker/daemon.json"
    )]
    pub daemon_json: PathBuf,
}

impl TrustArgs {
    pub fn build(&self) -> anyhow::Result<TrustOptions> {
        let mut t = TrustOptions::default();
        if !self.certs_dir.is_empty() {
            t.certs_dirs = self.certs_dir.clone();
        }
        if !self.hosts_dir.is_empty() {
            t.hosts_dirs = self.hosts_dir.clone();
        }
        for f in &self.ca_bundle {
            t.add_ca_bundle_file(f)?;
        }
        for f in &self.ca_configmap {
            t.add_ca_configmap_file(f)?;
        }
        for e in &self.insecure_registry {
            t.add_insecure(e)?;
        }
        if self.daemon_json.is_file() {
            t.load_daemon_json(&self.daemon_json)?;
        }
        Ok(t)
    }
}

/// Where credentials come from.
#[derive(Args, Clone, Debug, Default)]
pub struct CredArgs {
    /// Kubernetes Secret manifest (YAML/JSON) of type kubernetes.io/dockerconfigjson or
    /// kubernetes.io/dockercfg. Repeatable.
    #[arg(long = "pull-secret", value_name = "FILE")]
    pub pull_secret: Vec<PathBuf>,
    /// Docker config directory holding config.json [default: $DOCKER_CONFIG or ~/.docker].
    #[arg(long = "docker-config", value_name = "DIR")]
    pub docker_config: Option<PathBuf>,
}

impl CredArgs {
    pub fn config_dir(&self) -> PathBuf {
        self.docker_config
            .clone()
            .unwrap_or_else(berth_client::default_config_dir)
    }

    pub fn build(&self) -> anyhow::Result<Keyring> {
        let mut k = Keyring::new();
        for f in &self.pull_secret {
            k.add_pull_secret_file(f)?;
        }
        Ok(k.with_docker_config(DockerConfig::load_dir(&self.config_dir())?))
    }
}

/// Options shared by every command that talks to a registry.
#[derive(Args, Clone, Debug, Default)]
pub struct ConnArgs {
    #[command(flatten)]
    pub trust: TrustArgs,
    #[command(flatten)]
    pub creds: CredArgs,
    /// Concurrent blob transfers.
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// Push blobs in chunks of this many bytes (PATCH) instead of one streamed PUT.
    #[arg(long, value_name = "BYTES")]
    pub chunk_size: Option<u64>,
}

impl ConnArgs {
    pub fn client(&self) -> anyhow::Result<RegistryClient> {
        Ok(RegistryClient::new(ClientOptions {
            trust: self.trust.build()?,
            keyring: self.creds.build()?,
            parallel: self.parallel.max(1),
            chunk_size: self.chunk_size,
            ..ClientOptions::default()
        }))
    }
}

#[derive(Args, Clone, Debug, Default)]
pub struct PlatformArgs {
    /// Platform to select from an index (OS/ARCH[/VARIANT]) [default: this machine's].
    #[arg(long, conflicts_with = "all_platforms")]
    pub platform: Option<String>,
    /// Copy the whole index with every platform.
    #[arg(long)]
    pub all_platforms: bool,
}

impl PlatformArgs {
    fn resolve(&self, default_all: bool) -> anyhow::Result<Platforms> {
        Ok(match (&self.platform, self.all_platforms) {
            (Some(p), _) => Platforms::One(Platform::parse(p)?),
            (None, true) => Platforms::All,
            (None, false) if default_all => Platforms::All,
            (None, false) => Platforms::One(Platform::current()),
        })
    }
}

#[derive(Subcommand)]
pub enum ClientCommand {
    /// Log in to a registry: verify the credentials, then store them in config.json (or the
    /// configured credential helper).
    Login(LoginArgs),
    /// Remove a stored login.
    Logout(LogoutArgs),
    /// Pull an image into an OCI image layout directory.
    Pull(PullArgs),
    /// Push an image from an OCI image layout directory.
    Push(PushArgs),
    /// Copy an image: REF, docker://REF, oci:DIR[:TAG], docker-archive:FILE[:REF].
    Copy(CopyArgs),
    /// Give a remote image another tag (or copy it to another repository).
    Tag(TagArgs),
    /// Show an image's manifest, config, platforms and sizes.
    Inspect(InspectArgs),
    /// List a registry's repositories (HOST) or a repository's tags (HOST/REPO).
    Ls(LsArgs),
    /// Delete a manifest (by tag or digest).
    Rm(RmArgs),
}

#[derive(Args)]
pub struct LoginArgs {
    /// Registry host[:port] (docker.io for Docker Hub).
    pub host: String,
    #[arg(short, long)]
    pub username: Option<String>,
    /// Read the password from stdin.
    #[arg(long)]
    pub password_stdin: bool,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Args)]
pub struct LogoutArgs {
    pub host: String,
    #[arg(long = "docker-config", value_name = "DIR")]
    pub docker_config: Option<PathBuf>,
}

#[derive(Args)]
pub struct PullArgs {
    pub reference: String,
    /// OCI image layout directory to write (created if missing).
    #[arg(long)]
    pub layout: PathBuf,
    #[command(flatten)]
    pub platform: PlatformArgs,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Args)]
pub struct PushArgs {
    /// OCI layout: DIR[:TAG] (or oci:DIR[:TAG], docker-archive:FILE).
    pub layout: String,
    pub reference: String,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Args)]
pub struct CopyArgs {
    pub source: String,
    pub destination: String,
    #[command(flatten)]
    pub platform: PlatformArgs,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Args)]
pub struct TagArgs {
    pub source: String,
    /// A full reference, or just a tag for the same repository.
    pub destination: String,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Args)]
pub struct InspectArgs {
    pub reference: String,
    /// Print the manifest exactly as the registry sent it.
    #[arg(long)]
    pub raw: bool,
    /// Print the image config (JSON) instead of the summary.
    #[arg(long, conflicts_with = "raw")]
    pub config: bool,
    /// Platform to describe when the reference is an index (default: list all).
    #[arg(long)]
    pub platform: Option<String>,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Args)]
pub struct LsArgs {
    /// HOST[:PORT] for repositories, HOST[:PORT]/REPO for tags.
    pub target: String,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Args)]
pub struct RmArgs {
    pub reference: String,
    #[command(flatten)]
    pub conn: ConnArgs,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// `host[:port]` from what a user typed for `login` (scheme and path allowed).
pub fn normalize_host(s: &str) -> anyhow::Result<String> {
    let s = s.trim();
    let s = s.split_once("://").map(|(_, r)| r).unwrap_or(s);
    let s = s.split('/').next().unwrap_or(s);
    let s = match s {
        "index.docker.io" | "registry-1.docker.io" | "" => "docker.io",
        other => other,
    };
    if !berth_client::reference::validate_registry(s) {
        bail!("{s:?} is not a registry host[:port]");
    }
    Ok(s.to_string())
}

fn human(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

fn read_password(password_stdin: bool) -> anyhow::Result<String> {
    if !password_stdin {
        if let Ok(p) = std::env::var("BERTH_PASSWORD") {
            return Ok(p);
        }
        if !std::io::stdin().is_terminal() {
            bail!("no password: use --password-stdin (or set BERTH_PASSWORD)");
        }
        eprint!("Password: ");
        std::io::stderr().flush().ok();
        let _ = std::process::Command::new("stty").arg("-echo").status();
        let mut line = String::new();
        let r = std::io::stdin().read_line(&mut line);
        let _ = std::process::Command::new("stty").arg("echo").status();
        eprintln!();
        r.context("reading the password")?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_string());
    }
    let mut s = String::new();
    std::io::stdin()
        .read_to_string(&mut s)
        .context("reading the password from stdin")?;
    let p = s.trim_end_matches(['\r', '\n']).to_string();
    if p.is_empty() {
        bail!("the password read from stdin is empty");
    }
    Ok(p)
}

pub fn run(cmd: ClientCommand) -> anyhow::Result<()> {
    let rt = runtime()?;
    rt.block_on(run_async(cmd))
}

async fn run_async(cmd: ClientCommand) -> anyhow::Result<()> {
    match cmd {
        ClientCommand::Login(a) => {
            let host = normalize_host(&a.host)?;
            let username = match a.username {
                Some(u) => u,
                None if std::io::stdin().is_terminal() && !a.password_stdin => {
                    eprint!("Username: ");
                    std::io::stderr().flush().ok();
                    let mut l = String::new();
                    std::io::stdin().read_line(&mut l)?;
                    l.trim().to_string()
                }
                None => bail!("give the username with -u USER"),
            };
            let password = read_password(a.password_stdin)?;
            let client = RegistryClient::new(ClientOptions {
                trust: a.conn.trust.build()?,
                ..ClientOptions::default()
            });
            let cred = Credential {
                username: username.clone(),
                password: password.clone(),
                identity_token: None,
                registry_token: None,
                source: "the login command line".into(),
            };
            client.check_login(&host, &cred).await?;
            let mut cfg = DockerConfig::load_dir(&a.conn.creds.config_dir())?;
            let stored_in = cfg.store(&host, &username, &password)?;
            println!(
                "Login Succeeded ({} for {} stored in {stored_in})",
                username,
                config_key(&host)
            );
            Ok(())
        }
        ClientCommand::Logout(a) => {
            let host = normalize_host(&a.host)?;
            let dir = a
                .docker_config
                .unwrap_or_else(berth_client::default_config_dir);
            let mut cfg = DockerConfig::load_dir(&dir)?;
            if cfg.erase(&host)? {
                println!("Removed login credentials for {host}");
            } else {
                println!("Not logged in to {host}");
            }
            Ok(())
        }
        ClientCommand::Pull(a) => {
            let image = ImageRef::parse(&a.reference)?;
            let client = a.conn.client()?;
            let dst = Location::Layout {
                dir: a.layout.clone(),
                tag: Some(image.tag.clone().unwrap_or_else(|| "latest".into())),
            };
            let r = berth_client::copy(
                &client,
                &Location::Registry(image.clone()),
                &dst,
                &a.platform.resolve(false)?,
            )
            .await?;
            println!(
                "Pulled {image} ({}) into {}: {} blobs downloaded ({}), {} already present",
                r.digest,
                dst,
                r.blobs_copied,
                human(r.bytes_copied),
                r.blobs_skipped
            );
            Ok(())
        }
        ClientCommand::Push(a) => {
            let src = if a.layout.starts_with("oci:") || a.layout.starts_with("docker-archive:") {
                Location::parse(&a.layout)?
            } else {
                Location::parse(&format!("oci:{}", a.layout))?
            };
            let image = ImageRef::parse(&a.reference)?;
            let client = a.conn.client()?;
            let r = berth_client::copy(
                &client,
                &src,
                &Location::Registry(image.clone()),
                &Platforms::All,
            )
            .await?;
            println!(
                "Pushed {image}@{}: {} blobs uploaded ({}), {} already there",
                r.digest,
                r.blobs_copied,
                human(r.bytes_copied),
                r.blobs_skipped
            );
            Ok(())
        }
        ClientCommand::Copy(a) => {
            let src = Location::parse(&a.source)?;
            let dst = Location::parse(&a.destination)?;
            let default_all = !matches!(dst, Location::DockerArchive { .. });
            let client = a.conn.client()?;
            let r =
                berth_client::copy(&client, &src, &dst, &a.platform.resolve(default_all)?).await?;
            println!(
                "Copied {src} to {dst} ({}): {} blobs copied ({}), {} already there",
                r.digest,
                r.blobs_copied,
                human(r.bytes_copied),
                r.blobs_skipped
            );
            Ok(())
        }
        ClientCommand::Tag(a) => {
            let src = ImageRef::parse(&a.source)?;
            let dst = if !a.destination.contains(['/', ':', '@']) {
                berth_proto_tag(&a.destination)?;
                src.with_tag(&a.destination)
            } else {
                ImageRef::parse(&a.destination)?
            };
            let client = a.conn.client()?;
            let r = berth_client::copy(
                &client,
                &Location::Registry(src.clone()),
                &Location::Registry(dst.clone()),
                &Platforms::All,
            )
            .await?;
            println!("Tagged {src} as {dst} ({})", r.digest);
            Ok(())
        }
        ClientCommand::Inspect(a) => inspect(a).await,
        ClientCommand::Ls(a) => {
            let client = a.conn.client()?;
            if a.target.contains('/') {
                let image = ImageRef::parse(&a.target)?;
                for t in client.list_tags(&image).await? {
                    println!("{t}");
                }
            } else {
                let host = normalize_host(&a.target)?;
                for r in client.catalog(&host).await? {
                    println!("{r}");
                }
            }
            Ok(())
        }
        ClientCommand::Rm(a) => {
            let image = ImageRef::parse(&a.reference)?;
            let client = a.conn.client()?;
            let d = client.delete_manifest(&image).await?;
            println!("Deleted {}@{d}", image.name());
            Ok(())
        }
    }
}

fn berth_proto_tag(t: &str) -> anyhow::Result<()> {
    ImageRef::parse(&format!("x.invalid/x:{t}"))?;
    Ok(())
}

async fn inspect(a: InspectArgs) -> anyhow::Result<()> {
    let image = ImageRef::parse(&a.reference)?;
    let client = a.conn.client()?;
    let top = client.get_manifest(&image, &image.reference()).await?;
    if a.raw {
        std::io::stdout().write_all(&top.bytes)?;
        if !top.bytes.ends_with(b"\n") {
            println!();
        }
        return Ok(());
    }
    println!("Name:       {}", image.name());
    println!("Digest:     {}", top.digest);
    println!("MediaType:  {}", top.media_type);
    let mut manifest = top.clone();
    if top.is_index() || is_index_type(&top.media_type) {
        let shape = top.shape()?;
        println!("Platforms:");
        for d in &shape.manifests {
            let p = d
                .platform
                .as_ref()
                .map(|p| p.to_string())
                .unwrap_or_else(|| "(none)".into());
            println!("  {p:<20} {}  {}", d.digest, d.media_type);
        }
        let Some(p) = &a.platform else {
            if a.config {
                bail!("{image} is an index: choose a platform with --platform");
            }
            return Ok(());
        };
        let d = berth_client::image::select_platform(&shape, &Platform::parse(p)?)?;
        manifest = client
            .get_manifest(&image, &berth_proto::Reference::Digest(d.digest.clone()))
            .await?;
        println!("Selected:   {p} -> {}", manifest.digest);
    }
    let shape = manifest.shape()?;
    let Some(cfg) = shape.config else {
        return Ok(());
    };
    let config = client.fetch_blob_bytes(&image, &cfg, 16 << 20).await?;
    if a.config {
        std::io::stdout().write_all(&config)?;
        println!();
        return Ok(());
    }
    let v: serde_json::Value = serde_json::from_slice(&config).unwrap_or_default();
    let field = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("-").to_string();
    println!("Config:     {} ({})", cfg.digest, human(cfg.size));
    println!(
        "Platform:   {}/{}{}",
        field("os"),
        field("architecture"),
        v.get("variant")
            .and_then(|x| x.as_str())
            .map(|x| format!("/{x}"))
            .unwrap_or_default()
    );
    println!("Created:    {}", field("created"));
    let total: u64 = shape.layers.iter().map(|l| l.size).sum::<u64>() + cfg.size;
    println!(
        "Layers:     {} ({} total)",
        shape.layers.len(),
        human(total)
    );
    for l in &shape.layers {
        println!("  {}  {:>10}  {}", l.digest, human(l.size), l.media_type);
    }
    Ok(())
}
