//! The report (placeholder).
