//! The supervisor core knows nothing of the layers on it: control, metrics,
//! hooks, systemd, reexec and HTTP plug into its inputs and its transition
//! stream (docs/architecture.md). This keeps it so.

use std::fs;
use std::path::{Path, PathBuf};

/// Modules that sit on the supervisor and must not be imported by it.
const ABOVE: [&str; 8] = [
    "control", "metrics", "hooks", "systemd", "reexec", "http", "daemon", "top",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("reading src/supervisor") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn the_supervisor_imports_no_layer_above_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/supervisor");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    assert!(
        files.len() >= 5,
        "found only {files:?} under {}",
        root.display()
    );
    let mut found = Vec::new();
    for file in &files {
        let text = fs::read_to_string(file).expect("reading a source file");
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            for module in ABOVE {
                if code.contains(&format!("crate::{module}")) {
                    found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "src/supervisor/ imports layers above it:\n{}",
        found.join("\n")
    );
}
