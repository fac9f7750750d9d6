//! model (not yet implemented).
