//! coreset (not yet implemented).
