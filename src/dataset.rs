//! dataset (not yet implemented).
