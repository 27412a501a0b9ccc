//! etcd v3 (placeholder: filled in by the HAProxy backend work).
