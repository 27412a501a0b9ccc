//! HAProxy's runtime API (placeholder: filled in by the HAProxy backend work).
