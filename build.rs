//! Release builds of `berth` lay out the code an idle server runs (listed in
//! `link/startup.order` by `scripts/startup-order`) first and contiguously, through the
//! linker's `--symbol-ordering-file`. The kernel maps a binary's text in 64 KiB
//! fault-around windows, so start-up code scattered across 20 MiB of text keeps most of it
//! resident; placed together it costs a few windows (idle RSS 22 → 15 MiB when measured).
//!
//! The option is LLD's, which rustc uses by default for x86_64 Linux since 1.90 (this
//! workspace needs 1.95). With another target, a `linker` of one's own in RUSTFLAGS, or
//! `BERTH_NO_ORDER` set, nothing is added and only the idle memory differs.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=link/startup.order");
    println!("cargo:rerun-if-env-changed=BERTH_NO_ORDER");
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let release = env("PROFILE") == "release";
    let default_lld = env("TARGET") == "x86_64-unknown-linux-gnu";
    let flags = env("CARGO_ENCODED_RUSTFLAGS");
    let own_linker = flags.contains("linker") || flags.contains("link-self-contained");
    if !release || !default_lld || own_linker || std::env::var_os("BERTH_NO_ORDER").is_some() {
        return;
    }
    let order = Path::new(&env("CARGO_MANIFEST_DIR")).join("link/startup.order");
    if !order.is_file() {
        return;
    }
    println!(
        "cargo:rustc-link-arg-bin=berth=-Wl,--symbol-ordering-file={}",
        order.display()
    );
    // Names of functions that are gone or were inlined are expected, not news.
    println!("cargo:rustc-link-arg-bin=berth=-Wl,--no-warn-symbol-ordering");
}
