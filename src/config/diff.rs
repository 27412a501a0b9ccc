//! What a reload changes.

use std::collections::HashMap;

use super::{Config, ProgramConfig};

/// What a reload changes, by program name: added/removed/changed (ProgramConfig differs, compare with PartialEq)/unchanged, plus whether \[supervisor\] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigDiff {
    /// In the new config only (new file order).
    pub added: Vec<String>,
    /// In the old config only (old file order).
    pub removed: Vec<String>,
    /// In both, with any setting different (new file order); these restart.
    pub changed: Vec<String>,
    /// In both and identical (new file order); these keep running untouched.
    pub unchanged: Vec<String>,
    /// Whether the `[supervisor]` table differs.
    pub supervisor_changed: bool,
}

/// Compares two configs program by program (see [`ConfigDiff`]).
pub fn diff(old: &Config, new: &Config) -> ConfigDiff {
    let old_by_name: HashMap<&str, &ProgramConfig> = old
        .programs
        .iter()
        .map(|p| (p.name.as_str(), &**p))
        .collect();
    let new_by_name: HashMap<&str, &ProgramConfig> = new
        .programs
        .iter()
        .map(|p| (p.name.as_str(), &**p))
        .collect();
    let mut d = ConfigDiff {
        supervisor_changed: old.supervisor != new.supervisor,
        ..ConfigDiff::default()
    };
    for p in &new.programs {
        match old_by_name.get(p.name.as_str()) {
            None => d.added.push(p.name.clone()),
            Some(o) if **o == **p => d.unchanged.push(p.name.clone()),
            Some(_) => d.changed.push(p.name.clone()),
        }
    }
    d.removed = old
        .programs
        .iter()
        .filter(|p| !new_by_name.contains_key(p.name.as_str()))
        .map(|p| p.name.clone())
        .collect();
    d
}
