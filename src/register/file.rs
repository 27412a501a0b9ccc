//! An upstream file (placeholder: filled in by the HAProxy backend work).
