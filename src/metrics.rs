//! metrics (not yet implemented).
