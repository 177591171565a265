//! Pulls one model by hand: `cargo run -p baimo-store --example pull -- SPEC [DIR]`
//! (DIR defaults to `ModelStore::default_dir()`), then lists the store. Prints the time taken.

use std::time::Instant;

use baimo_store::{ModelStore, PullOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let spec = args
        .next()
        .unwrap_or_else(|| baimo_store::DEFAULT_MODEL.to_string());
    let dir = args
        .next()
        .map(Into::into)
        .unwrap_or_else(ModelStore::default_dir);
    let store = ModelStore::new(dir);
    let opts = PullOptions {
        progress: true,
        ..PullOptions::default()
    };
    let t = Instant::now();
    let m = store.pull(&spec, &opts)?;
    eprintln!(
        "pulled {} from {} in {:.1} s",
        m.name,
        m.source,
        t.elapsed().as_secs_f64()
    );
    eprintln!("  path   {}", m.path.display());
    eprintln!("  sha256 {}", m.sha256.as_deref().unwrap_or("(folder)"));
    for s in store.list() {
        println!(
            "{}\t{}\t{}\t{}",
            s.name,
            s.size,
            s.sha256.unwrap_or_default(),
            s.source
        );
    }
    Ok(())
}
