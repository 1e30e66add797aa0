// `sqlx::migrate!` embeds crates/storage/migrations at compile time; rebuild when a
// migration is added or changed (cargo does not track that directory otherwise).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
