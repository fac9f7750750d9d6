//! embedding (not yet implemented).
