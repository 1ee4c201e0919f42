//! Regression comparison of two record sets (placeholder).
